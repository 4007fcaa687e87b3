//! Statements: GetFlightInfo plans once and hands out a self-contained ticket; DoGet redeems it
//! on any node; statements without a result set run at once. Also cancel and renew.
//!
//! ```text
//!  GetFlightInfo(query) ─ plan once (schema, pinned versions; the plan kept) ─▶ FlightInfo{signed ticket}
//!  DoGet(ticket)        ─ verify, run the kept plan (or re-plan at the pinned versions) ─▶ Schema, batches…
//! ```
//!
//! A result that is a plain union over one scan's cells, on a swarm, gets one endpoint per node,
//! each ticket naming a share of the cells and located at the node that serves it best
//! (`share_endpoints`; `docs/distributed.md`, "Results from every node").

use apiary_proto::v1::{ShareV1, StatementTicketV1};
use apiary_runtime::{Pins, Session, Shares, Statement};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::{CancelStatus, FlightDescriptor, FlightEndpoint, FlightInfo};
use datafusion::common::ScalarValue;
use tonic::Response;

use super::FlightSql;
use super::ticket::{new_ticket, query_request, session_of};
use super::wire::{
    BoxStream, decode_param_rows, encode_stream_as, ipc_schema, nullable_as, same_columns,
    timestamp_ms, wire_schema,
};
use crate::auth::{Principal, SessionSlot};
use crate::error::{Error, Result};

impl FlightSql {
    /// Plan a query and describe it as a FlightInfo with one self-contained ticket. A statement
    /// without a result set runs now and answers with no endpoints, its row count in
    /// `total_records` (DB-API rowcount); a session it changes (`USE` run as a query, as ADBC
    /// does) goes back through `slot`, onto the `caller`'s session (`who` is the session the
    /// statement runs in: a prepared statement's own).
    pub(super) async fn flight_info_for_query(
        &self,
        who: &Principal,
        back: SessionBack<'_>,
        sql: &str,
        params: bytes::Bytes,
        descriptor: FlightDescriptor,
        announced: Option<SchemaRef>,
    ) -> Result<FlightInfo> {
        let session = session_of(who)?;
        let caller = session_of(back.caller)?;
        let stmt = self.parse_one(sql)?;
        let rows = decode_param_rows(&params)?;
        if !stmt.returns_rows() {
            let (count, after) = self.run_update(&session, &stmt, rows).await?;
            remember_changes(back.slot, &caller, &session, &after);
            if stmt.counts_rows() {
                // One `count` row, as DataFusion answers; the ticket carries it.
                let schema = count_schema();
                let mut ticket = new_ticket(
                    sql,
                    bytes::Bytes::new(),
                    &session,
                    &Pins::new(),
                    who,
                    self.expiry(),
                    ipc_schema(&schema)?,
                );
                ticket.affected = Some(count);
                let endpoint = FlightEndpoint::new()
                    .with_ticket(self.ticket_for(&ticket))
                    .with_expiration_time(timestamp_ms(ticket.expires_at_ms));
                return Ok(FlightInfo::new()
                    .try_with_schema(&schema)
                    .map_err(Error::encode("a FlightInfo"))?
                    .with_endpoint(endpoint)
                    .with_descriptor(descriptor)
                    .with_total_records(count as i64)
                    .with_total_bytes(-1));
            }
            return FlightInfo::new()
                .try_with_schema(&Schema::empty())
                .map_err(Error::encode("a FlightInfo"))
                .map(|i| {
                    i.with_descriptor(descriptor)
                        .with_total_records(count as i64)
                        .with_total_bytes(0)
                });
        }
        let row_count = rows.len();
        let first = rows.into_iter().next();
        if stmt.params > 0 && first.is_none() {
            return Err(Error::invalid(format!(
                "the statement takes {} parameter(s); bind them first",
                stmt.params
            )));
        }
        let planned = self.service.plan(&session, &stmt, first, true).await?;
        // A schema announced before (by CreatePreparedStatement) stays the schema while the
        // result has the same columns: two plannings may differ in what changes no value, and
        // clients check that every answer agrees. Not when what it reads changed since (a table
        // replaced: its values would go out under the old names and types), nor with
        // parameters (before they were bound, their types and the result's were unknown).
        let planned_wire = wire_schema(&planned.schema);
        let schema = match announced {
            Some(a) if stmt.params == 0 && same_columns(&a, &planned_wire) => {
                nullable_as(&a, &planned_wire)
            }
            _ => planned_wire,
        };
        // Several parameter rows answer one result, planned row by row: a column NULL in one
        // row's plan and not in the first's must be nullable (it failed as INTERNAL).
        let schema = match row_count > 1 {
            true => Arc::new(apiary_runtime::engine::nullable(&schema)),
            false => schema,
        };
        let mut ticket = new_ticket(
            sql,
            params,
            &session,
            &planned.pins,
            who,
            self.expiry(),
            ipc_schema(&schema)?,
        );
        ticket.plan_key = planned.plan_key.unwrap_or_default();
        let endpoints = match planned.shares.filter(|_| row_count <= 1) {
            Some(shares) => self.share_endpoints(who, &ticket, &shares),
            None => vec![
                FlightEndpoint::new()
                    .with_ticket(self.ticket_for(&ticket))
                    .with_expiration_time(timestamp_ms(ticket.expires_at_ms)),
            ],
        };
        let mut info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(Error::encode("a FlightInfo"))?;
        for endpoint in endpoints {
            info = info.with_endpoint(endpoint);
        }
        Ok(info
            .with_descriptor(descriptor)
            .with_total_records(-1)
            .with_total_bytes(-1)
            .with_ordered(false))
    }

    /// One endpoint per share of a result: the first is served over this connection (its plan
    /// is kept here), each other one located at the node its cells were spread to, then at this
    /// node. Every ticket is valid on every node; each share is its own query (own id, cancelled
    /// with the FlightInfo). A caller from another host is never sent to a loopback URL: that
    /// share is served over this connection instead.
    fn share_endpoints(
        &self,
        who: &Principal,
        whole: &StatementTicketV1,
        shares: &Shares,
    ) -> Vec<FlightEndpoint> {
        let reachable = |url: &String| {
            !url.is_empty() && (who.peer.is_none_or(|ip| ip.is_loopback()) || !loopback_url(url))
        };
        let own = shares.homes.first().filter(|u| reachable(u));
        shares
            .homes
            .iter()
            .enumerate()
            .map(|(index, home)| {
                let mut t = whole.clone();
                if index > 0 {
                    t.query_id = uuid::Uuid::now_v7().to_string();
                    t.plan_key.clear();
                }
                t.share = Some(ShareV1 {
                    index: index as u32,
                    of: shares.of,
                    partitions: shares.partitions.unwrap_or(0) as u32,
                });
                let mut endpoint = FlightEndpoint::new()
                    .with_ticket(self.ticket_for(&t))
                    .with_expiration_time(timestamp_ms(t.expires_at_ms));
                if index > 0 && reachable(home) {
                    endpoint = endpoint.with_location(home);
                    if let Some(own) = own {
                        endpoint = endpoint.with_location(own);
                    }
                }
                endpoint
            })
            .collect()
    }

    /// Execute a ticket: the node runs the plan it kept for it, or plans again at the pinned
    /// versions, and the result streams.
    pub(super) async fn execute_ticket(
        &self,
        who: &Principal,
        t: StatementTicketV1,
    ) -> Result<Response<BoxStream<arrow_flight::FlightData>>> {
        if t.user != who.user {
            return Err(Error::PermissionDenied(
                "ticket belongs to another user".into(),
            ));
        }
        // The stream goes out in the schema FlightInfo announced, whatever this planning says.
        let announced = match t.schema.is_empty() {
            true => None,
            false => Some(Arc::new(
                arrow::ipc::convert::try_schema_from_ipc_buffer(&t.schema)
                    .map_err(|_| Error::invalid("malformed ticket (its schema)"))?,
            )),
        };
        if let Some(count) = t.affected {
            let batch = RecordBatch::try_new(
                count_schema(),
                vec![Arc::new(arrow::array::UInt64Array::from(vec![count]))],
            )
            .map_err(Error::encode("the count row"))?;
            let stream = datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                count_schema(),
                futures::stream::iter([Ok(batch)]),
            );
            return Ok(Response::new(encode_stream_as(Box::pin(stream), announced)));
        }
        let request = query_request(t, who.role)?;
        // Several parameter rows are planned row by row, their types cast to the first's.
        let one_plan = request.params.len() <= 1;
        let stream = self.service.query(request).await?;
        if let Some(a) = &announced
            && one_plan
            && !same_columns(a, &wire_schema(&stream.schema()))
        {
            return Err(Error::Changed(
                "the statement's result is no longer what GetFlightInfo announced (a view it \
                 reads was redefined since): run the statement again"
                    .into(),
            ));
        }
        Ok(Response::new(encode_stream_as(stream, announced)))
    }

    /// A prepared statement redeemed as a ticket (some clients do): a fresh ticket, no pins.
    pub(super) fn ticket_of_prepared(
        &self,
        who: &Principal,
        p: apiary_proto::v1::PreparedStatementV1,
    ) -> Result<StatementTicketV1> {
        let session = Session {
            hive: apiary_storage::Ident::parse(&p.default_hive)?,
            box_name: apiary_storage::Ident::parse(&p.default_box)?,
            user: who.user.clone(),
            role: who.role,
            options: super::ticket::options_of(&p.options),
        };
        Ok(new_ticket(
            &p.sql,
            p.parameters,
            &session,
            &Pins::new(),
            who,
            self.expiry(),
            bytes::Bytes::new(),
        ))
    }

    /// Run a statement that does not return rows, once per parameter row (or once).
    /// Returns the rows affected and the session after the statement (USE changes it).
    pub(super) async fn run_update(
        &self,
        session: &Session,
        stmt: &Statement,
        rows: Vec<Vec<ScalarValue>>,
    ) -> Result<(u64, Session)> {
        Ok(self.service.update(session, stmt, rows).await?)
    }

    /// `CommandStatementUpdate`: every statement of the text in order; a `USE` applies to the
    /// statements after it and to the session the client gets back.
    pub(super) async fn update_statements(
        &self,
        who: &Principal,
        slot: Option<SessionSlot>,
        sql: &str,
    ) -> Result<i64> {
        let statements = self.service.parse(sql)?;
        let start = session_of(who)?;
        let mut session = start.clone();
        let mut total = 0;
        for stmt in &statements {
            if stmt.params > 0 {
                return Err(Error::invalid("parameters need a prepared statement"));
            }
            let (n, after) = self.run_update(&session, stmt, vec![]).await?;
            total += n as i64;
            session = after;
        }
        remember(slot, &start, &session);
        Ok(total)
    }

    /// Schema of what a query returns, without running it (GetSchema).
    pub(super) async fn query_schema(
        &self,
        who: &Principal,
        sql: &str,
        params: Option<bytes::Bytes>,
    ) -> Result<SchemaRef> {
        let session = session_of(who)?;
        let stmt = self.parse_one(sql)?;
        if stmt.counts_rows() {
            return Ok(count_schema());
        }
        if !stmt.returns_rows() {
            // Planned, not run: text that does not parse or names nothing is refused here as
            // it would be when executed.
            self.service.statement_info(&session, &stmt).await?;
            return Ok(std::sync::Arc::new(Schema::empty()));
        }
        let first = match params {
            Some(p) => decode_param_rows(&p)?.into_iter().next(),
            None => None,
        };
        if first.is_none() && stmt.params > 0 {
            let info = self.service.statement_info(&session, &stmt).await?;
            return Ok(wire_schema(&info.schema));
        }
        let planned = self.service.plan(&session, &stmt, first, false).await?;
        Ok(wire_schema(&planned.schema))
    }

    /// Cancel every query a FlightInfo's endpoints name: the caller's own only, and at most
    /// `max_cancel_endpoints` of them (each costs a storage write).
    pub(super) async fn cancel_info(
        &self,
        who: &Principal,
        info: &FlightInfo,
    ) -> Result<CancelStatus> {
        if info.endpoint.len() > self.max_cancel_endpoints {
            return Err(Error::invalid(format!(
                "{} endpoints to cancel; the limit is {} (--max-cancel-endpoints)",
                info.endpoint.len(),
                self.max_cancel_endpoints
            )));
        }
        let mut status = CancelStatus::NotCancellable;
        let mut seen = std::collections::HashSet::new();
        for ep in &info.endpoint {
            let Some(ticket) = &ep.ticket else { continue };
            let Ok(t) = self.ticket_from_any(&ticket.ticket) else {
                continue;
            };
            if t.user != who.user {
                return Err(Error::PermissionDenied(
                    "the query belongs to another user".into(),
                ));
            }
            if seen.insert(t.query_id.clone()) {
                self.service.cancel(&t.query_id).await?;
            }
            status = CancelStatus::Cancelled;
        }
        Ok(status)
    }

    /// RenewFlightEndpoint: the same endpoint with a later expiry.
    pub(super) fn renew(&self, who: &Principal, ep: FlightEndpoint) -> Result<FlightEndpoint> {
        let ticket = ep
            .ticket
            .as_ref()
            .ok_or_else(|| Error::invalid("endpoint without ticket"))?;
        let mut t = self.ticket_from_any(&ticket.ticket)?;
        if t.user != who.user {
            return Err(Error::PermissionDenied(
                "ticket belongs to another user".into(),
            ));
        }
        t.expires_at_ms = self.expiry();
        Ok(FlightEndpoint {
            ticket: Some(self.ticket_for(&t)),
            location: ep.location.clone(),
            expiration_time: Some(timestamp_ms(t.expires_at_ms)),
            app_metadata: ep.app_metadata.clone(),
        })
    }

    pub(super) fn parse_one(&self, sql: &str) -> Result<Statement> {
        let mut all = self.service.parse(sql)?;
        if all.len() != 1 {
            return Err(Error::invalid(format!(
                "expected one statement, found {}",
                all.len()
            )));
        }
        Ok(all.remove(0))
    }
}

/// Where what a statement changes in its session goes: the client's (`caller`) session, through
/// `slot`.
pub(super) struct SessionBack<'a> {
    pub(super) caller: &'a Principal,
    pub(super) slot: Option<SessionSlot>,
}

/// Hand a changed session back to the client (the auth layer puts it into the next token).
pub(super) fn remember(slot: Option<SessionSlot>, before: &Session, after: &Session) {
    remember_changes(slot, before, before, after)
}

/// Give back to the client's session (`caller`) what a statement changed, from `before` (the
/// session it ran in) to `after`: its place if it moved, the options it set or reset. A
/// prepared statement runs in the session it was prepared in; writing that session back
/// whole pulled a client that had since moved (`USE`, `SET`) back to where it prepared, and
/// its next statements read other tables.
pub(super) fn remember_changes(
    slot: Option<SessionSlot>,
    caller: &Session,
    before: &Session,
    after: &Session,
) {
    let mut next = crate::auth::Place {
        hive: caller.hive.to_string(),
        box_name: caller.box_name.to_string(),
        options: caller.options.clone(),
    };
    if (&after.hive, &after.box_name) != (&before.hive, &before.box_name) {
        next.hive = after.hive.to_string();
        next.box_name = after.box_name.to_string();
    }
    let value = |options: &[(String, String)], key: &str| {
        options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let keys: std::collections::BTreeSet<&String> = before
        .options
        .iter()
        .chain(&after.options)
        .map(|(k, _)| k)
        .collect();
    for key in keys {
        let set = value(&after.options, key);
        if value(&before.options, key) == set {
            continue;
        }
        next.options.retain(|(k, _)| k != key);
        if let Some(v) = set {
            next.options.push((key.clone(), v));
        }
    }
    next.options.sort();
    let unchanged = (next.hive.as_str(), next.box_name.as_str(), &next.options)
        == (
            caller.hive.as_str(),
            caller.box_name.as_str(),
            &caller.options,
        );
    if !unchanged && let Some(s) = slot {
        s.set(next);
    }
}

/// Whether a Flight URL names this host's loopback interface (`localhost`, 127.0.0.0/8, ::1).
fn loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The one column an `INSERT` run as a query answers.
fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
        "count",
        arrow::datatypes::DataType::UInt64,
        false,
    )]))
}
