//! The Vercel driver. PLACEHOLDER on main while the real driver is written on its branch
//! (this session): every sync reports Vercel as not yet supported, and nothing is written.

use super::{ActOutcome, Driver, Planned, SyncInput};
use crate::platform::{Platform, PlatformError, PlatformResult};

/// Syncs Vercel objects.
#[derive(Clone, Copy, Debug, Default)]
pub struct VercelDriver;

impl Driver for VercelDriver {
    const PLATFORM: Platform = Platform::Vercel;
    type Work = ();

    async fn plan(&self, _input: &SyncInput<'_>) -> PlatformResult<Planned<()>> {
        Err(PlatformError::Invalid {
            platform: Platform::Vercel,
            operation: "sync",
            status: None,
            reason: "the Vercel driver is not built yet".into(),
        })
    }

    async fn act(&self, _input: &SyncInput<'_>, _planned: Planned<()>) -> ActOutcome {
        ActOutcome::default()
    }
}
