//! What one run of the step is, typed once: its shape, dtype, thread
//! budget, step mode and form.
//!
//! Three records name a run — a checkpoint's header (to resume it with
//! the same arithmetic), a wisdom entry's key (to find the plan tuned for
//! it) and a sweep point's report (to compare it with another sweep's) —
//! and each embeds this one description rather than keeping its own copy
//! of the fields. The checkpoint header and the report flatten it, so
//! their JSON reads as it always did (`"dtype":"f64","n":64,…` at the top
//! level, files written before still read); `form` is left out when
//! primal, as older files had it absent.

use crate::scalar::Dtype;
use crate::shape::Shape;
use crate::step::{Form, StepMode};
use serde::{Deserialize, Serialize};

/// A run of the step: the facts that decide its arithmetic and its speed.
/// (Which library ran it, how the plan divided it and what it trained on
/// are each record's own business.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunDescription {
    /// `f32` or `f64`.
    pub dtype: Dtype,
    /// Batch size N: rows of x and y.
    pub n: usize,
    /// Input width D_in.
    pub d_in: usize,
    /// Hidden width H.
    pub hidden: usize,
    /// Output width D_out.
    pub d_out: usize,
    /// Thread budget (rayon's and OpenBLAS's together).
    pub threads: usize,
    /// `fused` or `explicit`.
    pub step_mode: StepMode,
    /// The step's form (absent: primal, as in files written before the
    /// dual form).
    #[serde(default, skip_serializing_if = "is_primal")]
    pub form: Form,
}

fn is_primal(f: &Form) -> bool {
    *f == Form::Primal
}

impl RunDescription {
    /// A run of `shape` in `dtype` on `threads` threads.
    pub fn new(
        shape: Shape,
        dtype: Dtype,
        threads: usize,
        step_mode: StepMode,
        form: Form,
    ) -> Self {
        RunDescription {
            dtype,
            n: shape.n,
            d_in: shape.d_in,
            hidden: shape.hidden,
            d_out: shape.d_out,
            threads,
            step_mode,
            form,
        }
    }

    /// Its shape, as stored (unchecked: a record read from a file is
    /// checked with [`Shape::new`] by whoever builds buffers from it).
    pub fn shape(&self) -> Shape {
        Shape {
            n: self.n,
            d_in: self.d_in,
            hidden: self.hidden,
            d_out: self.d_out,
        }
    }

    /// The same run with another shape (a whole batch's, under MPI, where
    /// one process runs its rows).
    pub fn with_shape(self, shape: Shape) -> Self {
        RunDescription::new(shape, self.dtype, self.threads, self.step_mode, self.form)
    }

    /// The run's class for tuning: each dimension rounded up to a power of
    /// two (plans measured on one shape serve its neighbours).
    pub fn class(self) -> Self {
        let s = self.shape();
        self.with_shape(Shape {
            n: s.n.next_power_of_two(),
            d_in: s.d_in.next_power_of_two(),
            hidden: s.hidden.next_power_of_two(),
            d_out: s.d_out.next_power_of_two(),
        })
    }

    /// One step's FLOPs in its form (a multiply-add as two).
    pub fn flops_per_step(&self) -> f64 {
        self.form.flops_per_step(self.shape())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_flat_and_leaves_out_the_primal_form() {
        let d = RunDescription::new(
            Shape::REFERENCE,
            Dtype::F64,
            2,
            StepMode::Fused,
            Form::Primal,
        );
        let text = serde_json::to_string(&d).unwrap();
        assert_eq!(
            text,
            r#"{"dtype":"f64","n":64,"d_in":1000,"hidden":100,"d_out":10,"threads":2,"step_mode":"fused"}"#
        );
        assert_eq!(serde_json::from_str::<RunDescription>(&text).unwrap(), d);
        let dual = RunDescription {
            form: Form::Dual,
            ..d
        };
        let text = serde_json::to_string(&dual).unwrap();
        assert!(text.ends_with(r#","form":"dual"}"#), "{text}");
        assert_eq!(serde_json::from_str::<RunDescription>(&text).unwrap(), dual);
    }

    #[test]
    fn class_rounds_each_dimension_up_to_a_power_of_two() {
        let d = RunDescription::new(
            Shape::new(100, 1000, 64, 10).unwrap(),
            Dtype::F32,
            2,
            StepMode::Explicit,
            Form::Primal,
        );
        assert_eq!(d.class().shape(), Shape::new(128, 1024, 64, 16).unwrap());
        assert_eq!(d.class().dtype, Dtype::F32);
        assert_eq!(d.class().step_mode, StepMode::Explicit);
    }
}
