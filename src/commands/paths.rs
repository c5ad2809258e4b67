//! The one rule for the files a command names: no output may be one of the
//! command's inputs or another of its outputs (the same file by device and
//! inode, links followed, or the same folder and name for an output not
//! written yet: [`twolayer::output::check_distinct`]). It runs in `main`
//! for every subcommand, before any of them reads or writes anything, from
//! what clap parsed: every path-valued flag of every subcommand has its
//! role in [`ROLES`], and a test walks the command-line definition so that
//! a path flag added without a role fails the suite the day it is added.
//!
//! The same place checks that every output can be written the way it
//! will be ([`Writes`]), so that no command does its work and then fails
//! to keep it (an immutable file, another user's file in /tmp, a name too
//! long for the temporary file beside it).
//!
//! Files a command finds by itself (the default wisdom file, the data a
//! checkpoint names, the reports inside a compared folder) are the
//! command's to add: `train` and `compare` check those with the same
//! function.

use std::path::{Path, PathBuf};
use twolayer::error::Result;
use twolayer::output::check_distinct;

/// What a command does with a path it is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read: must survive the run.
    Input,
    /// Written (or appended to).
    Output,
}

use Role::{Input, Output};

/// Every path-valued flag (and positional) of every subcommand, by
/// subcommand and clap id, with its role.
pub const ROLES: &[(&str, &str, Role)] = &[
    ("train", "init", Input),
    ("train", "resume", Input),
    ("train", "data", Input),
    ("train", "val", Input),
    ("train", "weights", Input),
    ("train", "wisdom", Input),
    ("train", "save", Output),
    ("train", "losses", Output),
    ("train", "checkpoint", Output),
    ("train", "save_best", Output),
    ("train", "metrics", Output),
    ("train", "json", Output),
    ("predict", "weights", Input),
    ("predict", "x", Input),
    ("predict", "out", Output),
    ("predict", "json", Output),
    ("eval", "weights", Input),
    ("eval", "data", Input),
    ("eval", "json", Output),
    ("sweep", "grid", Input),
    ("sweep", "wisdom", Input),
    ("sweep", "out", Output),
    ("sweep", "json", Output),
    // tune reads the wisdom file it extends, and writes it: an output.
    ("tune", "grid", Input),
    ("tune", "wisdom", Output),
    ("tune", "json", Output),
    ("compare", "baseline", Input),
    ("compare", "current", Input),
    ("compare", "grid", Input),
    ("compare", "history", Output),
    ("compare", "chart", Output),
    ("compare", "json", Output),
    ("history", "file", Input),
    ("history", "chart", Output),
    ("history", "json", Output),
    ("info", "json", Output),
];

/// How an output is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// Replaced whole through a temporary file beside it (every output
    /// not listed in [`WRITES`]).
    Replace,
    /// Appended to.
    Append,
    /// A folder the command writes files in (made when missing).
    Folder,
    /// Replaced whole, its folder made when missing.
    ReplaceMakingFolder,
}

/// The outputs not replaced whole, and how they are written.
pub const WRITES: &[(&str, &str, Writes)] = &[
    ("sweep", "out", Writes::Folder),
    ("compare", "history", Writes::Append),
    ("tune", "wisdom", Writes::ReplaceMakingFolder),
];

/// How output `id` of subcommand `name` is written.
pub fn writes(name: &str, id: &str) -> Writes {
    WRITES
        .iter()
        .find(|w| w.0 == name && w.1 == id)
        .map_or(Writes::Replace, |w| w.2)
}

/// Fails when `path` cannot be written as `how` says (see
/// [`twolayer::output::check_writable`]).
pub fn check_writable_as(path: &Path, how: Writes) -> Result<()> {
    use twolayer::output;
    match how {
        Writes::Replace => output::check_writable(path),
        Writes::Append => output::check_appendable(path),
        Writes::Folder => output::check_folder_writable(path),
        Writes::ReplaceMakingFolder => match path.parent() {
            Some(p) if !p.as_os_str().is_empty() && !p.is_dir() => output::check_folder_writable(p),
            _ => output::check_writable(path),
        },
    }
}

/// (subcommand, output, input) that may name one file: a resumed run
/// writes its next checkpoint over the one it read (atomically), which is
/// the point of resuming.
const MAY_SHARE: &[(&str, &str, &str)] = &[("train", "checkpoint", "resume")];

/// The paths subcommand `name` was given, with their roles, the flag (as
/// typed: `--save-best`, or a positional's name) that gave each, and
/// their clap ids.
pub fn named_paths(
    cmd: &clap::Command,
    name: &str,
    m: &clap::ArgMatches,
) -> Vec<(String, PathBuf, Role, &'static str)> {
    let Some(sub) = cmd.find_subcommand(name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for &(_, id, role) in ROLES.iter().filter(|r| r.0 == name) {
        let Ok(Some(values)) = m.try_get_raw(id) else {
            continue;
        };
        let label = sub
            .get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_long().map(|l| format!("--{l}")))
            .unwrap_or_else(|| id.to_uppercase());
        for v in values {
            out.push((label.clone(), PathBuf::from(v), role, id));
        }
    }
    out
}

/// Fails, with one line naming both flags, when an output of the command
/// clap parsed into `matches` is one of its inputs or another output; and,
/// naming the flag, when an output cannot be written as it will be.
pub fn check(cmd: &clap::Command, matches: &clap::ArgMatches) -> Result<()> {
    let Some((name, m)) = matches.subcommand() else {
        return Ok(());
    };
    let paths = named_paths(cmd, name, m);
    let flag_of = |id: &str| -> Option<&(String, PathBuf, Role, &str)> {
        let label = format!("--{}", id.replace('_', "-"));
        paths.iter().find(|p| p.0 == label)
    };
    // Pairs allowed to share: drop the output from the check when it is
    // that input's file (any other clash of it is still caught below
    // through the input).
    let mut shared: Vec<&str> = Vec::new();
    for &(_, out, inp) in MAY_SHARE.iter().filter(|s| s.0 == name) {
        if let (Some(o), Some(i)) = (flag_of(out), flag_of(inp)) {
            if check_distinct(&[(&i.0, &i.1)], &[(&o.0, &o.1)]).is_err() {
                shared.push(&o.0);
            }
        }
    }
    let pick = |role: Role| -> Vec<(&str, &Path)> {
        paths
            .iter()
            .filter(|p| p.2 == role && !(role == Output && shared.contains(&p.0.as_str())))
            .map(|p| (p.0.as_str(), p.1.as_path()))
            .collect()
    };
    check_distinct(&pick(Input), &pick(Output))?;
    for (flag, path, _, id) in paths.iter().filter(|p| p.2 == Output) {
        check_writable_as(path, writes(name, id))
            .map_err(|e| twolayer::error::Error::invalid(format!("{flag}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory;

    /// Whether `a` takes path values (clap's PathBuf parser).
    fn takes_paths(a: &clap::Arg) -> bool {
        a.get_value_parser().type_id() == clap::builder::ValueParser::path_buf().type_id()
    }

    #[test]
    fn every_path_flag_of_every_subcommand_has_a_role() {
        let cmd = Cli::command();
        let mut seen = 0;
        for sub in cmd.get_subcommands() {
            for a in sub.get_arguments().filter(|a| takes_paths(a)) {
                let id = a.get_id().as_str();
                assert!(
                    ROLES.iter().any(|r| r.0 == sub.get_name() && r.1 == id),
                    "`twolayer {} {id}` takes a path but has no role in commands/paths.rs ROLES: say whether it is read or written",
                    sub.get_name()
                );
                seen += 1;
            }
        }
        // And every role names a flag that exists and takes paths.
        for &(sub, id, _) in ROLES {
            let s = cmd.find_subcommand(sub).unwrap_or_else(|| panic!("{sub}"));
            assert!(
                s.get_arguments()
                    .any(|a| a.get_id() == id && takes_paths(a)),
                "ROLES names {sub} {id}, which takes no path"
            );
        }
        assert_eq!(seen, ROLES.len());
    }

    /// An invocation of `sub` with every required argument that `extra`
    /// does not give given its own file in `dir`, and `extra` after them.
    fn invocation(dir: &Path, sub: &clap::Command, extra: &[String]) -> Vec<String> {
        let mut argv = vec!["twolayer".to_string(), sub.get_name().to_string()];
        let given = |a: &clap::Arg| {
            a.get_long()
                .is_some_and(|l| extra.contains(&format!("--{l}")))
        };
        for a in sub
            .get_arguments()
            .filter(|a| a.is_required_set() && !given(a))
        {
            let f = dir
                .join(format!("required-{}", a.get_id()))
                .display()
                .to_string();
            match a.get_long() {
                Some(l) => argv.extend([format!("--{l}"), f]),
                None => argv.push(f),
            }
        }
        argv.extend_from_slice(extra);
        argv
    }

    /// The matrix from the command-line definition: for every subcommand,
    /// every output flag against every input flag and every other output
    /// flag, the same existing file for both is refused, naming both
    /// flags, before the command runs (this is the function `main` calls
    /// first). A pair clap refuses (conflicting flags) is skipped; every
    /// output must meet at least one pair that is checked.
    #[test]
    fn every_output_against_every_input_and_output_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Cli::command();
        let file = dir.path().join("same.npz");
        std::fs::write(&file, b"not to be lost").unwrap();
        let f = file.display().to_string();
        let mut checked = 0;
        for sub in cmd.get_subcommands() {
            let name = sub.get_name();
            let flags: Vec<&clap::Arg> = sub
                .get_arguments()
                .filter(|a| takes_paths(a) && a.get_long().is_some())
                .collect();
            let role = |a: &clap::Arg| {
                ROLES
                    .iter()
                    .find(|r| r.0 == name && r.1 == a.get_id())
                    .map(|r| r.2)
                    .unwrap()
            };
            for out in flags.iter().filter(|a| role(a) == Output) {
                let mut pairs_checked = 0;
                for other in flags.iter().filter(|b| b.get_id() != out.get_id()) {
                    if MAY_SHARE
                        .iter()
                        .any(|s| s.0 == name && s.1 == out.get_id() && s.2 == other.get_id())
                    {
                        continue;
                    }
                    let extra = [
                        format!("--{}", out.get_long().unwrap()),
                        f.clone(),
                        format!("--{}", other.get_long().unwrap()),
                        f.clone(),
                    ];
                    let argv = invocation(dir.path(), sub, &extra);
                    let Ok(m) = Cli::command().try_get_matches_from(&argv) else {
                        continue; // clap refuses the pair (conflicting flags)
                    };
                    let e = check(&cmd, &m).expect_err(&format!("{argv:?} was accepted"));
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&format!("--{}", out.get_long().unwrap()))
                            && msg.contains(&format!("--{}", other.get_long().unwrap())),
                        "{argv:?}: {msg}"
                    );
                    pairs_checked += 1;
                    checked += 1;
                }
                assert!(
                    pairs_checked > 0 || flags.len() == 1,
                    "twolayer {name} --{}: no pair of it was checked",
                    out.get_long().unwrap()
                );
            }
            // Positional inputs (compare's reports, history's file) against
            // every output.
            for pos in sub
                .get_arguments()
                .filter(|a| takes_paths(a) && a.get_long().is_none())
            {
                for out in flags.iter().filter(|a| role(a) == Output) {
                    let mut argv = invocation(dir.path(), sub, &[]);
                    let at = argv
                        .iter()
                        .position(|v| v.ends_with(&format!("required-{}", pos.get_id())))
                        .unwrap();
                    argv[at] = f.clone();
                    argv.extend([format!("--{}", out.get_long().unwrap()), f.clone()]);
                    let m = Cli::command().try_get_matches_from(&argv).unwrap();
                    assert!(check(&cmd, &m).is_err(), "{argv:?} was accepted");
                    checked += 1;
                }
            }
        }
        assert!(checked > 40, "only {checked} pairs checked");
        assert_eq!(std::fs::read(&file).unwrap(), b"not to be lost");
        // Distinct files pass; a resumed run's checkpoint may be the file
        // it resumed from.
        let argv = [
            "twolayer",
            "train",
            "--resume",
            &f,
            "--checkpoint",
            &f,
            "--save",
        ]
        .map(String::from)
        .to_vec()
        .into_iter()
        .chain([dir.path().join("w.npz").display().to_string()])
        .collect::<Vec<_>>();
        let m = Cli::command().try_get_matches_from(&argv).unwrap();
        check(&cmd, &m).unwrap();
    }

    /// Class 3's matrix, from the command-line definition: every output
    /// flag of every subcommand, aimed at a file that cannot be replaced
    /// (immutable), at a folder, and at a name whose temporary sibling
    /// would be too long, is refused — or, for the last, accepted — by the
    /// check `main` runs before any command does any work. A new output
    /// flag is covered the day it is added.
    #[test]
    fn every_output_that_cannot_be_written_is_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Cli::command();
        let imm = dir.path().join("immutable.out");
        std::fs::write(&imm, b"keep").unwrap();
        let made = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&imm)
            .status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "this test needs chattr +i (root, a filesystem with attributes): CI runs as root"
        );
        let folder = dir.path().join("a-folder");
        std::fs::create_dir(&folder).unwrap();
        let long = dir.path().join("l".repeat(250));
        let mut checked = 0;
        for sub in cmd.get_subcommands() {
            let name = sub.get_name();
            for out in sub.get_arguments().filter(|a| {
                takes_paths(a)
                    && a.get_long().is_some()
                    && ROLES
                        .iter()
                        .any(|r| r.0 == name && r.1 == a.get_id() && r.2 == Output)
            }) {
                let flag = format!("--{}", out.get_long().unwrap());
                let how = writes(name, out.get_id().as_str());
                for (target, refused) in [
                    (&imm, true),
                    (&folder, how != Writes::Folder),
                    (&long, false),
                ] {
                    let argv = invocation(
                        dir.path(),
                        sub,
                        &[flag.clone(), target.display().to_string()],
                    );
                    let m = Cli::command()
                        .try_get_matches_from(&argv)
                        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                    match check(&cmd, &m) {
                        Err(e) if refused => {
                            assert!(e.to_string().starts_with(&flag), "{argv:?}: {e}")
                        }
                        Ok(()) if !refused => {}
                        r => panic!("{argv:?}: {r:?}"),
                    }
                    checked += 1;
                }
            }
        }
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&imm)
            .status();
        assert!(checked >= 3 * 19, "only {checked} cases");
        // Nothing was left behind by the checks.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }
}
