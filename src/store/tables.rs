//! Every table in the database, in one place. Keys are native redb types so range scans
//! sort correctly; values are JSON records (see `codec`) so fields can be added without a
//! migration. A breaking change to a table gets a new versioned name (`starts-1` →
//! `starts-2`) and a migration that copies the data across.

use redb::TableDefinition;

/// Key: setting name (`schema_version`, `instance`, `readiness_probe`).
/// Value: JSON — a number for `schema_version`, an [`crate::instance::Instance`] for
/// `instance`, a timestamp for `readiness_probe`.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Key: start sequence number, from 1. Value: JSON [`crate::instance::Start`].
pub const STARTS: TableDefinition<u64, &[u8]> = TableDefinition::new("starts-1");
