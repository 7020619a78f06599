//! Step 3, storage: the volume's block device ([`device`]), the gate that the data on it
//! belongs to this id and cluster ([`gate`]), and the mount that formats only a volume that
//! is provably new ([`mount`]).

pub mod device;
pub mod gate;
pub mod mount;
