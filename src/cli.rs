//! The command line, as clap definitions. `main.rs` parses it and hands each
//! subcommand to its runner in [`crate::commands`].

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use twolayer::bench::grid::Preset;
use twolayer::minibatch::ReaderChoice;
use twolayer::named::Named;
use twolayer::scalar::Dtype;
use twolayer::step::{FormChoice, StepMode};
use twolayer::train::Loss;

/// Trains a two-layer network (Linear → ReLU → Linear, sum-of-squares loss,
/// SGD) through OpenBLAS GEMM, and measures how fast it goes.
#[derive(Debug, Parser)]
#[command(
    name = "twolayer",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TWOLAYER_GIT_COMMIT"), ")"),
    about,
    long_about = None
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Let an output path that is a symbolic link write the file the link
    /// points to (atomically, the link kept); without it such a path is
    /// refused, since replacing it would replace the link (`/dev/stdout`
    /// redirected to a file is one)
    #[arg(long = "follow-links", global = true)]
    pub follow_links: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the network; with no flags, the reference experiment
    /// (N=64, D_in=1000, H=100, D_out=10, lr 1e-6, 500 steps, f64).
    #[command(
        after_help = "Examples:\n  twolayer train                       the reference experiment\n  twolayer train --data data.npz --val-fraction 0.2 --save w.npz \\\n      --save-best best.npz --patience 5 --checkpoint run.ck\n                                       your data: biases, mean loss, lr 0.01,\n                                       batches of 32, 20 epochs unless told\n  twolayer train --resume run.ck       continue a stopped run"
    )]
    Train(Box<TrainArgs>),
    /// Measure the training step over a grid of shapes, dtypes and thread
    /// counts, and write throughput reports.
    #[command(
        after_help = "Example:\n  twolayer sweep --preset reference --processes 3 --out report/"
    )]
    Sweep(SweepArgs),
    /// Measure the step's plans on this machine and remember the fastest
    /// for each point in a wisdom file, which train and sweep then use
    #[command(
        after_help = "Example:\n  twolayer tune --preset reference --wisdom my-machine.json"
    )]
    Tune(TuneArgs),
    /// Print the environment block and the machine's measured GEMM rate.
    #[command(after_help = "Example:\n  twolayer info --json > machine.json")]
    Info(InfoArgs),
    /// Compare two sweep reports point by point: exit 1 when a point is
    /// slower beyond --max-slowdown with confidence, 2 on unusable input.
    #[command(
        after_help = "Example:\n  twolayer compare base/report.json new/report.json --max-slowdown 0.1 --chart change.svg"
    )]
    Compare(CompareArgs),
    /// Print the regression gate's history (`compare --history`) and draw
    /// its trend: the overall change at every comparison, against the
    /// merge's base and against an older anchor, and what the merges
    /// added up to.
    #[command(
        after_help = "Example:\n  twolayer history target/gate-history.jsonl --chart trend.svg"
    )]
    History(HistoryArgs),
    /// Predict y for every row of x with trained weights, in batches.
    #[command(
        after_help = "Example:\n  twolayer predict --weights w.npz --x new_x.npy --out y_pred.npy"
    )]
    Predict(PredictArgs),
    /// The loss and mean squared error of trained weights on a dataset.
    #[command(after_help = "Example:\n  twolayer eval --weights w.npz --data test.npz")]
    Eval(EvalArgs),
    /// Print a completion script for a shell (bash, zsh, fish, elvish,
    /// powershell).
    #[command(
        after_help = "Example:\n  twolayer completions bash > /etc/bash_completion.d/twolayer"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A positive count (at least 1).
fn positive(s: &str) -> Result<usize, String> {
    let v: usize = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if v == 0 {
        return Err("must be at least 1".into());
    }
    Ok(v)
}

/// A seed: a whole number from 0 to 2^64 − 1.
fn seed(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| {
        format!("'{s}' is not a seed; give a whole number from 0 to 18446744073709551615")
    })
}

/// A learning rate: finite and not negative.
fn learning_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("must be a finite number ≥ 0, got {s}"));
    }
    Ok(v)
}

/// clap's parser for one of the library's enumerations: its names as the
/// possible values (each with its description in `--help`), parsed by name.
fn named<T: Named + Send + Sync>() -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
    PossibleValuesParser::new(
        T::VALUES
            .iter()
            .map(|&(_, name, help)| PossibleValue::new(name).help(help)),
    )
    .map(|s| T::from_name(&s).expect("clap admits only the listed names"))
}

/// How an MPI job sums each step's gradients over its ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AllreduceMode {
    /// Non-blocking allreduces, each started as its part is final (g_w2
    /// and the loss while g_w1 is still being computed, then g_w1 piece by
    /// piece), all waited for at the end of the gradients.
    Overlap,
    /// Blocking allreduces once the step's gradients are all computed.
    Blocking,
}

/// Flags for training under mpirun (ignored by a single process).
#[derive(Clone, Copy, Debug, Args)]
pub struct AllreduceArgs {
    /// Under mpirun: how gradients are summed across ranks
    #[arg(long, value_enum, default_value = "overlap")]
    pub allreduce: AllreduceMode,
    /// Under mpirun with --allreduce overlap: how many pieces (row ranges)
    /// g_w1's sum is started in
    #[arg(long = "allreduce-pieces", default_value = "8", value_parser = positive, allow_negative_numbers = true)]
    pub allreduce_pieces: usize,
}

impl AllreduceArgs {
    /// Whether to overlap, and in how many pieces of g_w1 (1 when
    /// blocking).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub fn overlap_and_pieces(&self) -> (bool, usize) {
        match self.allreduce {
            AllreduceMode::Overlap => (true, self.allreduce_pieces),
            AllreduceMode::Blocking => (false, 1),
        }
    }
}

/// Flags of `twolayer train`.
#[derive(Clone, Debug, Args)]
pub struct TrainArgs {
    /// Batch size N (rows of x and y) [default: 64, or from --init]
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    pub n: Option<usize>,
    /// Input width D_in [default: 1000, or from --init]
    #[arg(long = "d-in", value_parser = positive, allow_negative_numbers = true)]
    pub d_in: Option<usize>,
    /// Hidden width H [default: 100, or from --init]
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    pub hidden: Option<usize>,
    /// Output width D_out [default: 10, or from --init]
    #[arg(long = "d-out", value_parser = positive, allow_negative_numbers = true)]
    pub d_out: Option<usize>,
    /// Learning rate of both layers [default: 1e-6, or the checkpoint's]
    #[arg(long, value_parser = learning_rate, allow_hyphen_values = true)]
    pub lr: Option<f64>,
    /// Learning rate of w1 alone (0 holds w1 fixed) [default: --lr]
    #[arg(long = "lr-w1", value_parser = learning_rate, allow_hyphen_values = true)]
    pub lr_w1: Option<f64>,
    /// Learning rate of w2 alone (0 holds w2 fixed) [default: --lr]
    #[arg(long = "lr-w2", value_parser = learning_rate, allow_hyphen_values = true)]
    pub lr_w2: Option<f64>,
    /// Training steps [default: 500, or the checkpoint's total]
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    pub steps: Option<usize>,
    /// Element type: f64, f32, or bf16 (mixed precision: bf16 GEMMs, f32
    /// everything else; needs OpenBLAS's cblas_sbgemm) [default: f64, or
    /// the file's with --init or --data; one that differs from the file's
    /// casts it, with a note]
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Seed of the random x, y, w1 and w2; with --data, of the seeded
    /// weights, the shuffles and the validation split [default: 0]
    #[arg(long, value_parser = seed, allow_negative_numbers = true)]
    pub seed: Option<u64>,
    /// Threads for rayon and OpenBLAS alike [default: the cores available]
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    pub threads: Option<usize>,
    /// Print the loss of every K-th step (and of the last)
    #[arg(long = "log-every", default_value = "1", value_parser = positive, allow_negative_numbers = true)]
    pub log_every: usize,
    /// -q and --json (the summary as JSON).
    #[command(flatten)]
    pub output: OutputArgs,
    /// Start from x, y, w1, w2 in this .npz (as np.savez writes them)
    #[arg(long, conflicts_with = "seed")]
    pub init: Option<PathBuf>,
    /// Write the final w1 and w2 to this .npz
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Write every step's loss to this file, as "t loss" lines
    #[arg(long)]
    pub losses: Option<PathBuf>,
    /// How the update is applied [default: fused, or the checkpoint's]
    #[arg(long = "step-mode", value_parser = named::<StepMode>())]
    pub step_mode: Option<StepMode>,
    /// Run with the plan `twolayer tune` stored for this point in this
    /// wisdom file, where it has one [default: $TWOLAYER_WISDOM, else
    /// $XDG_CACHE_HOME/twolayer/wisdom.json, else
    /// ~/.cache/twolayer/wisdom.json, when it exists]
    #[arg(long, conflicts_with = "no_wisdom")]
    pub wisdom: Option<PathBuf>,
    /// Use the built-in plan, whatever wisdom exists
    #[arg(long = "no-wisdom")]
    pub no_wisdom: bool,
    /// How the step computes x·w1: on w1 (primal), or on C with
    /// w1 = w1_0 + xᵀ·C (dual: N² in place of N·D_in per step, for one
    /// fixed batch); auto takes the dual form when its FLOPs are at most
    /// half the primal's (docs/design.md) [default: auto, or the
    /// checkpoint's]
    #[arg(long, value_parser = named::<FormChoice>())]
    pub form: Option<FormChoice>,
    /// Write a checkpoint here (atomically) every --checkpoint-every steps,
    /// at the end, and when stopped by Ctrl-C or SIGTERM
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Let a new run's --checkpoint replace a file already there (by
    /// default a run refuses to overwrite another run's checkpoint)
    #[arg(long = "replace-checkpoint", requires = "checkpoint")]
    pub replace_checkpoint: bool,
    /// Steps between checkpoints
    #[arg(long = "checkpoint-every", default_value = "100", value_parser = positive, allow_negative_numbers = true)]
    pub checkpoint_every: usize,
    /// Continue the run saved in this checkpoint (same data, weights, loss
    /// history and settings); --steps is then the total to reach
    #[arg(long, conflicts_with_all = ["init", "seed"])]
    pub resume: Option<PathBuf>,
    /// With --resume: go on at the rate of --lr (or --lr-w1, --lr-w2)
    /// instead of the checkpoint's — after a divergence, from a checkpoint
    /// before it
    #[arg(long = "change-lr", requires = "resume")]
    pub change_lr: bool,
    /// Train on this data in minibatches: one .npz holding x (M×D_in) and
    /// y (M×D_out, or M), or two .npy files, x's then y's; f32 or f64; M
    /// as large as the disk allows
    #[arg(long, num_args = 1..=2, value_name = "FILE", conflicts_with_all = ["init", "n", "resume"])]
    pub data: Option<Vec<PathBuf>>,
    /// With --data: rows per step [default: 32, or all the training rows
    /// when fewer]; the rows left over at an epoch's end wait for the next
    /// epoch's shuffle
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    pub batch: Option<usize>,
    /// With --data: passes over the training rows, each in a fresh order
    /// from --seed [default: 20, unless --steps is given]
    #[arg(long, value_parser = positive, allow_negative_numbers = true, conflicts_with = "steps")]
    pub epochs: Option<usize>,
    /// With --data: validate on this data (same forms as --data) at the
    /// end of every epoch
    #[arg(long, num_args = 1..=2, value_name = "FILE", requires = "data", conflicts_with = "val_fraction")]
    pub val: Option<Vec<PathBuf>>,
    /// With --data: hold out this fraction of its rows (chosen by --seed,
    /// never trained on) and validate on them at the end of every epoch
    #[arg(long = "val-fraction", requires = "data")]
    pub val_fraction: Option<f64>,
    /// With --data: start from w1 and w2 in this .npz (as --save writes
    /// them) [default: seeded]
    #[arg(long, requires = "data")]
    pub weights: Option<PathBuf>,
    /// How the seeded weights are drawn [default: torch with --data,
    /// normal (the reference's) without]
    #[arg(long = "weight-init", value_enum)]
    pub weight_init: Option<WeightInitArg>,
    /// Give both layers a bias, as every nn.Linear has: y_pred =
    /// relu(x·w1 + b1)·w2 + b2, b1 and b2 starting at zero and trained
    /// with their layer's rate [default: on with --data, off for the
    /// reference experiment, or the checkpoint's]
    #[arg(long, conflicts_with = "no_bias")]
    pub bias: bool,
    /// Train without biases (the reference's model)
    #[arg(long = "no-bias")]
    pub no_bias: bool,
    /// The loss minimised and reported: sum of squares over the batch (the
    /// reference's), or its mean over every element, PyTorch's MSELoss
    /// (one lr then works for every batch size) [default: mean with
    /// --data, sum without, or the checkpoint's]
    #[arg(long, value_parser = named::<Loss>())]
    pub loss: Option<Loss>,
    /// With --data: also write the weights of the epoch with the lowest
    /// validation loss to this .npz (kept in the checkpoint too, so a
    /// resumed run still has them)
    #[arg(long = "save-best")]
    pub save_best: Option<PathBuf>,
    /// With --data: stop early once this many epochs in a row have not
    /// improved on the best validation loss (needs validation rows:
    /// --val-fraction or --val)
    #[arg(long, value_parser = positive, allow_negative_numbers = true)]
    pub patience: Option<usize>,
    /// With --data: read the batches from the files, even when the data
    /// would fit in memory [default: loaded into memory once when it and
    /// the run take at most half the memory available]
    #[arg(long)]
    pub stream: bool,
    /// With --data: how batches are gathered: before each step (inline),
    /// or by a reader thread while the step runs (ahead: uses a core the
    /// step leaves idle, hides waits on the disk); auto: ahead when the
    /// step's plan leaves a thread idle or the data streams from files
    /// larger than half the memory, inline otherwise
    #[arg(long, value_parser = named::<ReaderChoice>(), default_value = "auto")]
    pub reader: ReaderChoice,
    /// With --data: write one CSV line per epoch here (epoch, step, mean
    /// training loss of its steps, validation loss and mean squared error)
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Summing gradients across MPI ranks.
    #[command(flatten)]
    pub mpi: AllreduceArgs,
}

/// How seeded weights are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightInitArg {
    /// Standard normal, as the reference draws them.
    Normal,
    /// Standard normal scaled for the layer: w1 by sqrt(2/D_in) (He, for
    /// the ReLU), w2 by sqrt(1/H) (LeCun, for the linear output); biases
    /// zero.
    Scaled,
    /// As PyTorch's nn.Linear: every weight and bias of a layer uniform on
    /// [-1/sqrt(fan_in), 1/sqrt(fan_in)], fan_in = D_in for w1 and b1, H
    /// for w2 and b2.
    Torch,
}

impl From<WeightInitArg> for twolayer::net::WeightInit {
    fn from(a: WeightInitArg) -> Self {
        match a {
            WeightInitArg::Normal => Self::Normal,
            WeightInitArg::Scaled => Self::Scaled,
            WeightInitArg::Torch => Self::Torch,
        }
    }
}

/// What a subcommand prints: the same two flags on every one
/// (commands/result.rs).
#[derive(Clone, Debug, Args)]
pub struct OutputArgs {
    /// Quiet: none of the command's human-readable text (for train, no
    /// per-step losses); errors and warnings still go to stderr
    #[arg(long, short)]
    pub quiet: bool,
    /// Also write the command's result as JSON to this file; `-` or no
    /// FILE: to stdout, the human-readable text then going to stderr
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
}

/// Flags of `twolayer predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The weights: a .npz holding w1 and w2 (as `train --save` writes)
    #[arg(long)]
    pub weights: PathBuf,
    /// The inputs: a .npy of M×D_in, or a .npz holding x
    #[arg(long)]
    pub x: PathBuf,
    /// Write the predictions (M×D_out) here as a .npy
    #[arg(long)]
    pub out: PathBuf,
    /// How the forward pass runs.
    #[command(flatten)]
    pub pass: ForwardArgs,
    /// -q (no summary line) and --json (the summary).
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Flags of a forward pass (`predict`, `eval`).
#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Rows per forward pass
    #[arg(long, default_value = "4096", value_parser = positive)]
    pub batch: usize,
    /// Element type of the pass (and of predict's output) [default: the
    /// weights']
    #[arg(long)]
    pub dtype: Option<Dtype>,
    /// Threads for OpenBLAS [default: the cores available]
    #[arg(long, value_parser = positive)]
    pub threads: Option<usize>,
}

/// Flags of `twolayer eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The weights: a .npz holding w1 and w2
    #[arg(long)]
    pub weights: PathBuf,
    /// The data: one .npz holding x and y, or two .npy files
    #[arg(long, num_args = 1..=2, required = true, value_name = "FILE")]
    pub data: Vec<PathBuf>,
    /// How the forward pass runs.
    #[command(flatten)]
    pub pass: ForwardArgs,
    /// -q and --json (rows, loss_sum, mse).
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Flags of `twolayer sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Which points.
    #[command(flatten)]
    pub points: GridArgs,
    /// Untimed steps before each point's timed ones [default: 3, or the
    /// preset's or grid file's]
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Least number of timed steps per point [default: 10, or the preset's
    /// or grid file's]
    #[arg(long = "min-steps", value_parser = positive)]
    pub min_steps: Option<usize>,
    /// Least seconds of timed steps per point [default: 1, or the preset's
    /// or grid file's]
    #[arg(long)]
    pub budget: Option<f64>,
    /// Passes over the grid; each point's steps and budget are shared out
    /// among them and its samples pooled [default: 1, or the preset's or
    /// grid file's]
    #[arg(long, value_parser = positive)]
    pub rounds: Option<usize>,
    /// Run the whole sweep in K fresh processes, one after another, and keep
    /// for each point the process whose step/GEMM ratio is the median
    #[arg(long, default_value = "1", value_parser = positive)]
    pub processes: usize,
    /// How the update is applied
    #[arg(long = "step-mode", value_parser = named::<StepMode>(), default_value = "fused")]
    pub step_mode: StepMode,
    /// The step's form at every point: auto times the form `twolayer train`
    /// runs for the shape (the dual form where it saves FLOPs on one fixed
    /// batch), as users run it [default: auto, or the grid file's `form`]
    #[arg(long, value_parser = named::<FormChoice>())]
    pub form: Option<FormChoice>,
    /// Write report.json, report.csv, report.md, gflops.svg, phases.svg and scaling.svg here
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run each point with the plan `twolayer tune` stored for it in this
    /// wisdom file, where it has one [default: $TWOLAYER_WISDOM, else
    /// $XDG_CACHE_HOME/twolayer/wisdom.json, else
    /// ~/.cache/twolayer/wisdom.json, when it exists]
    #[arg(long, conflicts_with = "no_wisdom")]
    pub wisdom: Option<PathBuf>,
    /// Use the built-in plans, whatever wisdom exists
    #[arg(long = "no-wisdom")]
    pub no_wisdom: bool,
    /// Summing gradients across MPI ranks.
    #[command(flatten)]
    pub mpi: AllreduceArgs,
    /// -q (no Markdown report on stdout) and --json (the report, as
    /// report.json holds it).
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Which points a sweep or a tuning covers: flags, a grid file or a
/// preset.
#[derive(Debug, Args)]
pub struct GridArgs {
    /// Batch sizes, comma-separated [default: 64]
    #[arg(long, value_delimiter = ',', value_parser = positive, conflicts_with_all = ["grid", "preset"])]
    pub n: Option<Vec<usize>>,
    /// Input widths, comma-separated [default: 1000]
    #[arg(long = "d-in", value_delimiter = ',', value_parser = positive, conflicts_with_all = ["grid", "preset"])]
    pub d_in: Option<Vec<usize>>,
    /// Hidden widths, comma-separated [default: 100]
    #[arg(long, value_delimiter = ',', value_parser = positive, conflicts_with_all = ["grid", "preset"])]
    pub hidden: Option<Vec<usize>>,
    /// Output widths, comma-separated [default: 10]
    #[arg(long = "d-out", value_delimiter = ',', value_parser = positive, conflicts_with_all = ["grid", "preset"])]
    pub d_out: Option<Vec<usize>>,
    /// Element types, comma-separated: f32,f64,bf16 [default: f64]
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["grid", "preset"])]
    pub dtype: Option<Vec<Dtype>>,
    /// Thread counts, comma-separated [default: the cores available]
    #[arg(long, value_delimiter = ',', value_parser = positive)]
    pub threads: Option<Vec<usize>>,
    /// Read the grid from a TOML file (see docs/throughput-reports.md)
    #[arg(long, conflicts_with = "preset")]
    pub grid: Option<PathBuf>,
    /// A built-in grid
    #[arg(long, value_parser = named::<Preset>())]
    pub preset: Option<Preset>,
}

/// Flags of `twolayer tune`.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// Which points to tune.
    #[command(flatten)]
    pub points: GridArgs,
    /// How the update is applied
    #[arg(long = "step-mode", value_parser = named::<StepMode>(), default_value = "fused")]
    pub step_mode: StepMode,
    /// The form to plan [default: auto, the form `twolayer train` runs for
    /// each shape; a point that runs the dual form has no shards or blocks
    /// to plan and is skipped, with a note]
    #[arg(long, value_parser = named::<FormChoice>())]
    pub form: Option<FormChoice>,
    /// The wisdom file to fill [default: $TWOLAYER_WISDOM, else
    /// $XDG_CACHE_HOME/twolayer/wisdom.json, else
    /// ~/.cache/twolayer/wisdom.json]
    #[arg(long)]
    pub wisdom: Option<PathBuf>,
    /// Also time every plan on the whole batch, interleaved, and print
    /// where the tuned plan and the built-in rule stand against the best
    /// (slow: minutes for large shapes)
    #[arg(long)]
    pub exhaustive: bool,
    /// Interleaved rounds of the exhaustive search
    #[arg(long = "exhaustive-rounds", default_value = "5", value_parser = positive)]
    pub exhaustive_rounds: usize,
    /// -q (no line per point) and --json (the plans chosen, as the wisdom
    /// file's entries).
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Flags of `twolayer compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline: a report.json, or a folder of runs (each subfolder
    /// holding one process's report.json)
    pub baseline: PathBuf,
    /// The current build: a report.json, or a folder of runs
    pub current: PathBuf,
    /// Slowdown of wall time per step that fails the gate, as a fraction
    /// (0.1 = 10%) [default: the --grid file's [gate] max_slowdown, else
    /// 0.1]
    #[arg(long = "max-slowdown")]
    pub max_slowdown: Option<f64>,
    /// The grid file the reports were swept from: its [gate] table's
    /// threshold and per-point thresholds ([[gate.point]]) apply
    #[arg(long, value_name = "FILE.toml")]
    pub grid: Option<PathBuf>,
    /// The two folders' runs were taken alternately in one job (as
    /// scripts/bench-gate.sh does): pair them in name order
    #[arg(long)]
    pub paired: bool,
    /// Compare reports whose environments differ (CPU, cores, OpenBLAS,
    /// OPENBLAS_* variables, rustc, timing); the differences are printed
    /// either way, and without this flag they end with exit status 2
    #[arg(long = "allow-env-change")]
    pub allow_env_change: bool,
    /// Append the overall verdict to this history file (one JSON line;
    /// `twolayer history` prints and draws it)
    #[arg(long, value_name = "FILE.jsonl")]
    pub history: Option<PathBuf>,
    /// What the baseline is, as the history records it: `base` (the main a
    /// change was built on) or `anchor` (an older main, for creep)
    #[arg(
        long = "history-as",
        default_value = "base",
        requires = "history",
        value_parser = clap::builder::PossibleValuesParser::new(twolayer::bench::history::AGAINST)
    )]
    pub history_as: String,
    /// -q (no table) and --json (the verdicts).
    #[command(flatten)]
    pub output: OutputArgs,
    /// Points that one side ran and the other did not are an error (exit
    /// 2); by default they are listed as new or removed and not judged
    #[arg(long = "strict-points")]
    pub strict_points: bool,
    /// Also draw the comparison as an SVG chart in this file: each point's
    /// change with its 95% interval against the threshold
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
}

/// Flags of `twolayer history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The history file, one JSON line per comparison
    pub file: PathBuf,
    /// Also draw the trend as an SVG chart in this file
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
    /// -q (no table) and --json (the entries).
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Flags of `twolayer info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Threads for the GEMM-rate measurement [default: the cores available]
    #[arg(long, value_parser = positive)]
    pub threads: Option<usize>,
    /// -q and --json (everything as one JSON object).
    #[command(flatten)]
    pub output: OutputArgs,
    /// Measure the cores' peak again instead of using the cached probe
    /// (see docs/throughput-reports.md, "Peak")
    #[arg(long)]
    pub peak_again: bool,
    /// (Internal: the child that measures OpenBLAS's own kernel choice.)
    #[arg(long = "probe-own-kernels", hide = true)]
    pub probe_own_kernels: bool,
    /// (Internal: the side of the probe's square GEMM.)
    #[arg(long = "probe-size", hide = true, default_value = "2048")]
    pub probe_size: usize,
}

impl GridArgs {
    /// The grid spec the point flags, grid file or preset describe.
    pub fn spec(&self) -> twolayer::error::Result<twolayer::bench::grid::GridSpec> {
        let points = self;
        let mut spec = if let Some(path) = &points.grid {
            read_grid(path)?
        } else if let Some(preset) = points.preset {
            preset.spec(twolayer::threads::available_cores())
        } else {
            let list = |v: &Option<Vec<usize>>, default: usize| v.clone().unwrap_or(vec![default]);
            twolayer::bench::grid::GridSpec {
                n: Some(list(&points.n, 64)),
                d_in: Some(list(&points.d_in, 1000)),
                hidden: Some(list(&points.hidden, 100)),
                d_out: Some(list(&points.d_out, 10)),
                dtype: points
                    .dtype
                    .as_ref()
                    .map(|v| v.iter().map(|d| d.name().to_string()).collect()),
                ..twolayer::bench::grid::GridSpec::default()
            }
        };
        if let Some(t) = &points.threads {
            spec.threads = Some(t.clone());
        }
        Ok(spec)
    }
}

/// The wisdom file a run reads: the flag's, else the default location;
/// none with `--no-wisdom`.
/// Reads a grid file (TOML, at most [`twolayer::input::GRID_LIMIT`] bytes):
/// `--grid` of sweep, tune and compare.
pub fn read_grid(path: &std::path::Path) -> twolayer::Result<twolayer::bench::grid::GridSpec> {
    let text = twolayer::input::read_text(path, twolayer::input::GRID_LIMIT)?;
    toml::from_str(&text).map_err(|e| twolayer::Error::read(path, format!("not a valid grid: {e}")))
}

pub fn wisdom_path(
    flag: &Option<std::path::PathBuf>,
    no_wisdom: bool,
) -> Option<std::path::PathBuf> {
    if no_wisdom {
        return None;
    }
    flag.clone()
        .or_else(twolayer::tune::wisdom::Wisdom::default_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_shows_an_example() {
        for sub in Cli::command().get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.starts_with("Example") && help.contains("twolayer "),
                "`twolayer {}` has no example in its help",
                sub.get_name()
            );
        }
    }

    #[test]
    fn every_option_that_has_a_default_shows_it() {
        // The sweep's timing flags default to Timing::default() unless a
        // preset or grid file sets them: their help says so, with the
        // values Timing::default() really has.
        let t = twolayer::bench::grid::Timing::default();
        let sweep = Cli::command();
        let sweep = sweep.find_subcommand("sweep").unwrap();
        for (flag, value) in [
            ("warmup", t.warmup.to_string()),
            ("min-steps", t.min_steps.to_string()),
            ("budget", t.budget_s.to_string()),
            ("rounds", t.rounds.to_string()),
        ] {
            let arg = sweep
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap();
            let help = arg.get_help().unwrap().to_string();
            assert!(
                help.contains(&format!("[default: {value}, or the preset's")),
                "--{flag}: {help}"
            );
        }
        // Every other option with a value and no default says it has none
        // by being optional in what it names (a file, a list, a choice),
        // and has help that says what it is.
        let mut cli = Cli::command();
        cli.build();
        let mut checked = 0;
        for sub in cli.get_subcommands() {
            for a in sub.get_arguments() {
                let takes_value = a.get_num_args().is_some_and(|n| n.takes_values());
                if a.is_positional() || !takes_value || !a.get_default_values().is_empty() {
                    continue;
                }
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    !help.is_empty(),
                    "`twolayer {} --{}` has no help",
                    sub.get_name(),
                    a.get_long().unwrap_or("?")
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "{checked} options checked");
    }

    #[test]
    fn nonsense_values_are_refused() {
        for args in [
            &["twolayer", "train", "--n", "0"][..],
            &["twolayer", "train", "--lr", "-1"],
            &["twolayer", "train", "--lr", "nan"],
            &["twolayer", "train", "--steps", "abc"],
            &["twolayer", "train", "--dtype", "f16"],
            &["twolayer", "train", "--threads", "0"],
            &["twolayer", "train", "--seed", "-1"],
            &["twolayer", "train", "--seed", "1", "--init", "x.npz"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
    }
}
