//! The platform clients against the sandbox, every exchange checked against the spec subsets.

mod fly;
mod render;
mod spec_subsets;
mod supabase;
mod vercel;
