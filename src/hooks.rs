//! The hooks the engine's calls hand to the forward: a steering plan, a capture, a
//! generation monitor and a cancellation flag, behind the model's [`Hooks`] trait.

use candle_core::Tensor;

use crate::cancel::Cancel;
use crate::capture::{Capture, Monitor};
use crate::error::Result;
use crate::intervene::{ControllerRun, SteeringPlan};
use crate::model::{Hooks, Site, StepCtx};

/// Steering, then capture, at every site; cancellation checked before each block, so a
/// long prefill stops within one block.
#[derive(Default)]
pub struct Sites<'a> {
    pub steering: Option<&'a SteeringPlan>,
    pub capture: Option<&'a mut Capture>,
    /// Records the positions that predict each generated token (generation only).
    pub monitor: Option<&'a mut Monitor>,
    pub cancel: Option<&'a Cancel>,
    /// Steering controllers of a generation (patch, then read the last position).
    pub controller: Option<&'a mut ControllerRun>,
}

impl Hooks for Sites<'_> {
    fn at(&mut self, site: Site, h: Tensor, ctx: &StepCtx) -> Result<Tensor> {
        let h = match self.steering {
            Some(plan) => plan.apply(site, h, ctx)?,
            None => h,
        };
        let h = match self.controller.as_deref_mut() {
            Some(c) => c.at(site, h, ctx)?,
            None => h,
        };
        if let Some(cap) = self.capture.as_deref_mut() {
            cap.record(site, &h, ctx)?;
        }
        if let Some(mon) = self.monitor.as_deref_mut() {
            mon.record(site, &h, ctx)?;
        }
        Ok(h)
    }

    fn before_block(&mut self, _block: usize) -> Result<()> {
        match self.cancel {
            Some(c) => c.check(),
            None => Ok(()),
        }
    }
}
