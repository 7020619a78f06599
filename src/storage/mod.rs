//! Step 2, storage side (in progress): finding the volume's block device and checking that the
//! data on it belongs to this id and cluster. Mounting, formatting and growing follow.

pub mod device;
pub mod identity;
pub mod mount;
