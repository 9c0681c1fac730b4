//! The Fly driver. PLACEHOLDER on main while the real driver is written on its branch
//! (this session): every sync reports Fly as not yet supported, and nothing is written.

use super::{ActOutcome, Driver, Planned, SyncInput};
use crate::platform::{Platform, PlatformError, PlatformResult};

/// Syncs Fly objects.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlyDriver;

impl Driver for FlyDriver {
    const PLATFORM: Platform = Platform::Fly;
    type Work = ();

    async fn plan(&self, _input: &SyncInput<'_>) -> PlatformResult<Planned<()>> {
        Err(PlatformError::Invalid {
            platform: Platform::Fly,
            operation: "sync",
            status: None,
            reason: "the Fly driver is not built yet".into(),
        })
    }

    async fn act(&self, _input: &SyncInput<'_>, _planned: Planned<()>) -> ActOutcome {
        ActOutcome::default()
    }
}
