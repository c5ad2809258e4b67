//! How long gathering one batch of a dataset takes, and choosing its rows:
//! `cargo run --release --example gather_cost -- DATA.npz B [--stream]`
//! (or `X.npy Y.npy B`). Medians of 400 batches, one thread.
use std::time::Instant;
use twolayer::dataset::batches::Schedule;
use twolayer::dataset::Dataset;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let stream = a.iter().any(|v| v == "--stream");
    let a: Vec<&String> = a.iter().filter(|v| *v != "--stream").collect();
    let (files, b) = a.split_at(a.len() - 1);
    let files: Vec<std::path::PathBuf> = files.iter().map(|f| f.into()).collect();
    let mut data = Dataset::open(&files).unwrap();
    let b: usize = b[0].parse().unwrap();
    let residency = data.prepare(stream, 0).unwrap();
    let s = Schedule::new(data.rows(), b, 0, Some(0.2)).unwrap();
    let mut batch = twolayer::minibatch::empty_batch::<f64>(&data, b);
    let (mut rows, mut scratch) = (Vec::new(), Vec::new());
    let (mut pick, mut copy) = (Vec::new(), Vec::new());
    for step in 0..400 {
        let t0 = Instant::now();
        s.batch_rows(step, &mut rows);
        let t1 = Instant::now();
        data.gather(&rows, batch.x.view_mut(), batch.y.view_mut(), &mut scratch)
            .unwrap();
        let t2 = Instant::now();
        pick.push((t1 - t0).as_secs_f64() * 1e6);
        copy.push((t2 - t1).as_secs_f64() * 1e6);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{} rows of {} values, data {}: choosing the rows {:.1} µs, gathering them {:.1} µs (median of 400 batches)",
        b,
        data.d_in() + data.d_out(),
        residency.name(),
        median(&mut pick),
        median(&mut copy)
    );
}
