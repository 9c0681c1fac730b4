//! The Environment sync: observe, plan and act per platform, and the controller around it.

mod analysis;
mod chaos;
mod delivery;
mod environment;
mod fly;
mod notifications;
mod progress;
mod release;
mod release_bluegreen;
mod render;
mod supabase;
mod vercel;
