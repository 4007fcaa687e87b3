//! Cancel markers: how a `CancelFlightInfo` reaching one node stops work on every other.
//!
//! Any node writes `_apiary/queries/<q>/cancel`; nodes running the query or its fragments poll
//! for it (`QueryGuard::watch_storage` in the queries module).

use apiary_storage::format::{CancelV1, Versioned};
use apiary_storage::{Storage, paths};

/// Ask every node to cancel `query_id`.
pub(crate) async fn write_marker(storage: &Storage, query_id: &str) -> crate::Result<()> {
    let key = paths::cancel_marker(query_id)?;
    storage.put(&key, CancelV1::new().encode()).await?;
    Ok(())
}

/// Whether a cancel marker exists for `query_id`.
pub(crate) async fn requested(storage: &Storage, query_id: &str) -> crate::Result<bool> {
    Ok(storage.exists(&paths::cancel_marker(query_id)?).await?)
}
