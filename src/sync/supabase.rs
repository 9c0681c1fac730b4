//! The Supabase driver. PLACEHOLDER on main while the real driver is written on its branch
//! (this session): every sync reports Supabase as not yet supported, and nothing is written.

use super::{ActOutcome, Driver, Planned, SyncInput};
use crate::platform::{Platform, PlatformError, PlatformResult};

/// Syncs Supabase objects.
#[derive(Clone, Copy, Debug, Default)]
pub struct SupabaseDriver;

impl Driver for SupabaseDriver {
    const PLATFORM: Platform = Platform::Supabase;
    type Work = ();

    async fn plan(&self, _input: &SyncInput<'_>) -> PlatformResult<Planned<()>> {
        Err(PlatformError::Invalid {
            platform: Platform::Supabase,
            operation: "sync",
            status: None,
            reason: "the Supabase driver is not built yet".into(),
        })
    }

    async fn act(&self, _input: &SyncInput<'_>, _planned: Planned<()>) -> ActOutcome {
        ActOutcome::default()
    }
}
