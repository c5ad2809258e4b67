//! Any bytes given to the .npz reader end in an array set or an error —
//! never a panic, a hang, or an allocation a header merely claims.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = twolayer::npz::load_init_from(
        std::io::Cursor::new(data),
        std::path::Path::new("<fuzz>"),
    );
});
