//! Any bytes given to the checkpoint reader end in a checkpoint or an
//! error — never a panic, a hang, or an allocation a header merely claims.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = twolayer::checkpoint::AnyCheckpoint::from_bytes(data);
});
