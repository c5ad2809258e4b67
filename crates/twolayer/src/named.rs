//! The library's small enumerations as a front end offers them: by name.
//!
//! `--step-mode fused`, `--loss mean`, `form = "dual"` in a checkpoint and
//! the Python package's string parameters all name a value of one of these
//! enumerations. [`Named`] lists every value with its name and a one-line
//! description, so that a front end (the command line's parser, a binding)
//! can offer and parse them without the library depending on it, and
//! [`named!`](crate::named!) writes, from one table, the list, the `name`
//! method, `Display` and `FromStr` (whose error names every choice).

/// An enumeration whose values a front end offers by name.
pub trait Named: Copy + PartialEq + Sized + 'static {
    /// What a value is, in an error message: "step mode", "loss".
    const WHAT: &'static str;
    /// Every value with its name and a one-line description, in the order
    /// a front end lists them.
    const VALUES: &'static [(Self, &'static str, &'static str)];

    /// The value named `s`, if there is one.
    fn from_name(s: &str) -> Option<Self> {
        Self::VALUES.iter().find(|v| v.1 == s).map(|v| v.0)
    }

    /// The names, as an error message lists them: "sum or mean",
    /// "auto, primal or dual".
    fn choices() -> String {
        let names: Vec<&str> = Self::VALUES.iter().map(|v| v.1).collect();
        match names.split_last() {
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

/// Implements [`Named`], an inherent `name()`, `Display` (the name) and
/// `FromStr` (by name; an unknown one is an error naming the choices) for
/// an enumeration, from one table of `Variant => "name", "description"`.
#[macro_export]
macro_rules! named {
    ($ty:ident, $what:literal, { $($v:ident => $name:literal, $help:literal,)+ }) => {
        impl $crate::named::Named for $ty {
            const WHAT: &'static str = $what;
            const VALUES: &'static [(Self, &'static str, &'static str)] =
                &[$(($ty::$v, $name, $help)),+];
        }

        impl $ty {
            /// The name the command line, reports and checkpoints use.
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$v => $name,)+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                <$ty as $crate::named::Named>::from_name(s).ok_or_else(|| {
                    format!(
                        "unknown {} '{s}' ({})",
                        $what,
                        <$ty as $crate::named::Named>::choices()
                    )
                })
            }
        }
    };
}
