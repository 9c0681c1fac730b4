//! The Render driver. PLACEHOLDER on main while the real driver is written on its branch
//! (this session): every sync reports Render as not yet supported, and nothing is written.

use super::{ActOutcome, Driver, Planned, SyncInput};
use crate::platform::{Platform, PlatformError, PlatformResult};

/// Syncs Render objects.
#[derive(Clone, Copy, Debug, Default)]
pub struct RenderDriver;

impl Driver for RenderDriver {
    const PLATFORM: Platform = Platform::Render;
    type Work = ();

    async fn plan(&self, _input: &SyncInput<'_>) -> PlatformResult<Planned<()>> {
        Err(PlatformError::Invalid {
            platform: Platform::Render,
            operation: "sync",
            status: None,
            reason: "the Render driver is not built yet".into(),
        })
    }

    async fn act(&self, _input: &SyncInput<'_>, _planned: Planned<()>) -> ActOutcome {
        ActOutcome::default()
    }
}
