//! The library's enumerations offered by name (`twolayer::named`): every
//! value listed once, its name parsed back, an unknown name refused with
//! every choice named.

use twolayer::bench::grid::Preset;
use twolayer::minibatch::ReaderChoice;
use twolayer::named::Named;
use twolayer::step::{Form, FormChoice, StepMode};
use twolayer::train::Loss;

/// Every value of `T` is listed once, under a distinct name, and its
/// name parses back to it; an unknown name is an error naming them all.
fn round_trips<T: Named + std::fmt::Debug + std::str::FromStr<Err = String>>(n: usize) {
    assert_eq!(T::VALUES.len(), n, "{}", T::WHAT);
    for (i, &(v, name, help)) in T::VALUES.iter().enumerate() {
        assert!(!help.is_empty());
        assert_eq!(name.parse::<T>().unwrap(), v);
        assert_eq!(T::from_name(name), Some(v));
        for &(w, other, _) in &T::VALUES[..i] {
            assert_ne!(w, v);
            assert_ne!(other, name);
        }
    }
    let err = "bogus".parse::<T>().unwrap_err();
    assert!(
        err.starts_with(&format!("unknown {} 'bogus' (", T::WHAT)),
        "{err}"
    );
    for &(_, name, _) in T::VALUES {
        assert!(err.contains(name), "{err}");
    }
}

#[test]
fn every_named_enumeration_round_trips() {
    round_trips::<StepMode>(2);
    round_trips::<Loss>(2);
    round_trips::<Form>(2);
    round_trips::<FormChoice>(3);
    round_trips::<ReaderChoice>(3);
    round_trips::<Preset>(2);
    assert_eq!(Loss::choices(), "sum or mean");
    assert_eq!(FormChoice::choices(), "auto, primal or dual");
    assert_eq!(StepMode::Explicit.to_string(), "explicit");
}
