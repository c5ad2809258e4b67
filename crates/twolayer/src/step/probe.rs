//! Instrumentation: a step reports the end of each of its phases to a
//! [`Probe`], so that a benchmark can time the phases with the very code
//! that runs in training. [`NoProbe`] compiles to nothing.

/// The parts of a step, as the phase breakdown of a benchmark reports
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// x·w1 and h_relu·w2.
    ForwardGemms,
    /// The in-place ReLU.
    Relu,
    /// The loss and g_y pass.
    LossGrad,
    /// g_y·w2ᵀ, h_reluᵀ·g_y and xᵀ·g_h.
    BackwardGemms,
    /// The ReLU mask on g_hrelu.
    Mask,
    /// The first shard, done with its rows, waiting at the join for the
    /// others (their extra work and their threads' wake-up). Empty with
    /// one shard.
    Join,
    /// Summing the shards' gradients and the update pass (empty when the
    /// update is fused into the GEMMs).
    Update,
}

impl Phase {
    /// Every phase, in step order.
    pub const ALL: [Phase; 7] = [
        Phase::ForwardGemms,
        Phase::Relu,
        Phase::LossGrad,
        Phase::BackwardGemms,
        Phase::Mask,
        Phase::Join,
        Phase::Update,
    ];

    /// How many phases there are.
    pub const COUNT: usize = Phase::ALL.len();

    /// Its position in [`Phase::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Sees the end of each phase of a step. The step functions take one so
/// that a benchmark can time the phases with the very code that runs in
/// training; [`NoProbe`] compiles to nothing. Only the first shard reports
/// its phases (the shards do the same work side by side); the time it then
/// waits for the others is [`Phase::Join`], so the phases of a step add up
/// to the step.
pub trait Probe: Send {
    /// Called when `phase` has just finished.
    fn done(&mut self, phase: Phase);
}

/// The probe of an ordinary step: does nothing, costs nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProbe;

impl Probe for NoProbe {
    #[inline(always)]
    fn done(&mut self, _: Phase) {}
}
