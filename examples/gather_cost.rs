//! How long gathering one batch of a dataset takes, inline on the pool's
//! threads: `cargo run --release --example gather_cost -- X.npy Y.npy B`.
use std::time::Instant;
use twolayer::dataset::batches::Schedule;
use twolayer::dataset::Dataset;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let data = Dataset::open(&[a[1].clone().into(), a[2].clone().into()]).unwrap();
    let b: usize = a[3].parse().unwrap();
    let s = Schedule::new(data.rows(), b, 0, None).unwrap();
    let mut batch = twolayer::minibatch::empty_batch::<f64>(&data, b);
    let (mut rows, mut scratch) = (Vec::new(), Vec::new());
    for parts in [1, 2] {
        let mut t = Vec::new();
        for step in 0..40 {
            s.batch_rows(step, &mut rows);
            let start = Instant::now();
            data.gather_parallel(
                &rows,
                batch.x.view_mut(),
                batch.y.view_mut(),
                &mut scratch,
                parts,
            )
            .unwrap();
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
        t.sort_by(f64::total_cmp);
        println!(
            "{parts} thread(s): median {:.2} ms per batch of {b}",
            t[t.len() / 2]
        );
    }
}
