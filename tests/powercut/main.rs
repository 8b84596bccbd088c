//! Power-cut tests: `depot serve` (and `depot-agent fetch`) on crashfs, a file system that
//! keeps, when the power is cut, only what was fsynced (file data) and what directory fsyncs
//! made durable (names). Writers run concurrently; the cut comes at a seeded random point
//! (`POWERCUT_SEED` repeats it); after the reboot every acknowledged effect must be there,
//! byte-exact, and nothing deleted may come back. Where FUSE is missing each test prints
//! SKIPPED and passes.

mod agent;
mod rig;
mod s3;
