//! Tickets and prepared-statement handles: signed, self-contained messages that any node of
//! the swarm can redeem, and their conversion to and from the runtime's requests.
//!
//! ```text
//!  Ticket.ticket = Any(TicketStatementQuery{ statement_handle =
//!      SignedEnvelope{ kind "ticket", payload = StatementTicketV1 {query_id, sql, parameters
//!      (Arrow IPC), session hive/box, pins, user, expiry}, mac = HMAC(swarm key) } })
//!  prepared handle = SignedEnvelope{ kind "prepared", payload = PreparedStatementV1 {…} }
//! ```

use apiary_proto::v1::{PinnedFrameV1, PreparedStatementV1, SessionOptionV1, StatementTicketV1};
use apiary_runtime::{Pin, Pins, QueryRequest, Role, Session, Share};
use apiary_storage::{FrameRef, Ident};
use arrow_flight::Ticket;
use arrow_flight::sql::{Any, ProstMessageExt, TicketStatementQuery};
use prost::Message;

use super::FlightSql;
use super::wire::decode_param_rows;
use crate::auth::Principal;
use crate::error::{Error, Result};

impl FlightSql {
    /// Milliseconds since the epoch when a ticket or handle issued now expires.
    pub(super) fn expiry(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.ticket_ttl.as_millis() as i64
    }

    /// A Flight ticket carrying `t`, sealed.
    pub(super) fn ticket_for(&self, t: &StatementTicketV1) -> Ticket {
        let sealed = self.signer.seal("ticket", t.encode_to_vec());
        let tq = TicketStatementQuery {
            statement_handle: sealed.into(),
        };
        Ticket::new(tq.as_any().encode_to_vec())
    }

    /// Open a sealed statement handle; refuses expired ones.
    pub(super) fn open_ticket(&self, handle: &[u8]) -> Result<StatementTicketV1> {
        let payload = self.signer.open("ticket", handle)?;
        let t =
            StatementTicketV1::decode(payload).map_err(|_| Error::invalid("malformed ticket"))?;
        if t.expires_at_ms < chrono::Utc::now().timestamp_millis() {
            return Err(Error::invalid("ticket expired; run the statement again"));
        }
        Ok(t)
    }

    /// Open the statement ticket inside a Flight ticket's bytes.
    pub(super) fn ticket_from_any(&self, ticket: &[u8]) -> Result<StatementTicketV1> {
        let any = Any::decode(ticket).map_err(|_| Error::invalid("malformed ticket"))?;
        let tq: TicketStatementQuery = any
            .unpack()
            .map_err(|e| Error::invalid(format!("malformed ticket: {e}")))?
            .ok_or_else(|| Error::invalid("not a statement ticket"))?;
        self.open_ticket(&tq.statement_handle)
    }

    pub(super) fn seal_prepared(&self, p: &PreparedStatementV1) -> bytes::Bytes {
        self.signer.seal("prepared", p.encode_to_vec()).into()
    }

    /// Open a prepared-statement handle of `who`; refuses expired ones and other users'.
    pub(super) fn open_prepared(
        &self,
        handle: &[u8],
        who: &Principal,
    ) -> Result<PreparedStatementV1> {
        let payload = self.signer.open("prepared", handle)?;
        let p = PreparedStatementV1::decode(payload)
            .map_err(|_| Error::invalid("malformed prepared statement handle"))?;
        if p.expires_at_ms < chrono::Utc::now().timestamp_millis() {
            return Err(Error::invalid(
                "prepared statement expired; prepare it again",
            ));
        }
        if p.user != who.user {
            return Err(Error::PermissionDenied(
                "prepared statement belongs to another user".into(),
            ));
        }
        Ok(p)
    }
}

/// A new ticket for a statement of `who` in `session`.
pub(super) fn new_ticket(
    sql: &str,
    parameters: bytes::Bytes,
    session: &Session,
    pins: &Pins,
    who: &Principal,
    expires_at_ms: i64,
    schema: bytes::Bytes,
) -> StatementTicketV1 {
    StatementTicketV1 {
        query_id: uuid::Uuid::now_v7().to_string(),
        sql: sql.to_string(),
        parameters,
        default_hive: session.hive.to_string(),
        default_box: session.box_name.to_string(),
        pins: pins
            .iter()
            .map(|(f, pin)| PinnedFrameV1 {
                hive: f.hive.to_string(),
                box_name: f.box_name.to_string(),
                frame: f.name.to_string(),
                version: pin.version,
                incarnation: pin.incarnation.clone(),
            })
            .collect(),
        user: who.user.clone(),
        expires_at_ms,
        jdbc: who.jdbc,
        schema,
        affected: None,
        options: options_to(&session.options),
        plan_key: String::new(),
        share: None,
    }
}

/// What the runtime runs for a ticket, decoded once. The role is the redeeming caller's, as
/// the server's user list says now (never carried by the ticket).
pub(super) fn query_request(t: StatementTicketV1, role: Role) -> Result<QueryRequest> {
    let session = Session {
        hive: Ident::parse(&t.default_hive)?,
        box_name: Ident::parse(&t.default_box)?,
        user: t.user.clone(),
        role,
        options: options_of(&t.options),
    };
    let mut pins = Pins::new();
    for p in &t.pins {
        let f = FrameRef::new(
            Ident::parse(&p.hive)?,
            Ident::parse(&p.box_name)?,
            Ident::parse(&p.frame)?,
        );
        pins.insert(f, Pin::new(p.version, p.incarnation.clone()));
    }
    Ok(QueryRequest {
        params: decode_param_rows(&t.parameters)?,
        query_id: t.query_id,
        session,
        sql: t.sql,
        pins,
        plan_key: (!t.plan_key.is_empty()).then_some(t.plan_key),
        share: t.share.map(|s| Share {
            index: s.index,
            of: s.of,
            partitions: (s.partitions > 0).then_some(s.partitions as usize),
        }),
    })
}

/// The session a principal carries, validated.
pub(super) fn session_of(p: &Principal) -> Result<Session> {
    Ok(Session {
        hive: Ident::parse(&p.hive)?,
        box_name: Ident::parse(&p.box_name)?,
        user: p.user.clone(),
        role: p.role,
        options: p.options.clone(),
    })
}

/// Session options as tickets and prepared handles carry them.
pub(super) fn options_to(options: &[(String, String)]) -> Vec<SessionOptionV1> {
    options
        .iter()
        .map(|(key, value)| SessionOptionV1 {
            key: key.clone(),
            value: value.clone(),
        })
        .collect()
}

/// Session options from a ticket or prepared handle (sealed by us, so as we wrote them).
pub(super) fn options_of(options: &[SessionOptionV1]) -> Vec<(String, String)> {
    options
        .iter()
        .map(|o| (o.key.clone(), o.value.clone()))
        .collect()
}
