//! Sessions through a client that behaves like the Flight SQL JDBC driver (arrow-java, inside
//! DBeaver): a Basic handshake, then a credential middleware that takes the bearer token from
//! *every* response and forgets it when a response has none; every statement prepared
//! (CreatePreparedStatement, then DoPut(CommandPreparedStatementUpdate) for an empty dataset
//! schema or GetFlightInfo(CommandPreparedStatementQuery) for a query, then Close); each
//! endpoint fetched through a new connection with the current credential; `setCatalog` through
//! SetSessionOptions. `USE` must reach the next statement, with and without authentication.

use apiary_proto::flight_session as fs;
use apiary_tests::Server;
use arrow::array::{AsArray, RecordBatch};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, DoPutUpdateResult, ProstMessageExt,
};
use arrow_flight::utils::flight_data_to_batches;
use arrow_flight::{Action, FlightData, FlightDescriptor};
use futures::TryStreamExt;
use prost::Message;
use tonic::Request;
use tonic::transport::Channel;

use crate::flight_sql::{basic, hash};

struct JdbcLike {
    url: String,
    channel: Channel,
    /// The credential the middleware holds: replaced from every response, `None` when a
    /// response carries none (arrow-java's `ClientIncomingAuthHeaderMiddleware`).
    credential: Option<String>,
}

impl JdbcLike {
    async fn connect(url: &str, login: Option<(&str, &str)>) -> JdbcLike {
        let channel = Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = JdbcLike {
            url: url.to_string(),
            channel,
            credential: None,
        };
        if let Some((user, pw)) = login {
            c.credential = Some(basic(user, pw, true));
            let req = c.request(futures::stream::iter(vec![
                arrow_flight::HandshakeRequest::default(),
            ]));
            let resp = c.client().handshake(req).await.unwrap();
            c.remember(resp.metadata());
            let mut s = resp.into_inner();
            while s.message().await.unwrap().is_some() {}
        }
        c
    }

    fn client(&self) -> FlightServiceClient<Channel> {
        FlightServiceClient::new(self.channel.clone())
    }

    fn request<T>(&self, body: T) -> Request<T> {
        let mut r = Request::new(body);
        if let Some(c) = &self.credential {
            r.metadata_mut().insert("authorization", c.parse().unwrap());
        }
        r
    }

    fn remember(&mut self, md: &tonic::metadata::MetadataMap) {
        self.credential = md
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
    }

    async fn action(&mut self, kind: &str, body: Vec<u8>) -> Vec<prost::bytes::Bytes> {
        let req = self.request(Action::new(kind, body));
        let resp = self.client().do_action(req).await.unwrap();
        self.remember(resp.metadata());
        resp.into_inner()
            .map_ok(|r| r.body)
            .try_collect()
            .await
            .unwrap()
    }

    /// What `Statement.execute(sql)` does: prepare, run as update or query, close.
    async fn execute(&mut self, sql: &str) -> Result<Vec<RecordBatch>, tonic::Status> {
        let create = ActionCreatePreparedStatementRequest {
            query: sql.to_string(),
            transaction_id: None,
        };
        let req = self.request(Action::new(
            "CreatePreparedStatement",
            create.as_any().encode_to_vec(),
        ));
        let resp = self.client().do_action(req).await?;
        self.remember(resp.metadata());
        let body = resp.into_inner().message().await?.unwrap().body;
        let prepared: ActionCreatePreparedStatementResult =
            Any::decode(body).unwrap().unpack().unwrap().unwrap();
        let handle = prepared.prepared_statement_handle.clone();
        let out = if prepared.dataset_schema.is_empty() {
            let cmd = CommandPreparedStatementUpdate {
                prepared_statement_handle: handle.clone(),
            };
            let descriptor = FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec());
            let first = FlightData {
                flight_descriptor: Some(descriptor),
                ..Default::default()
            };
            let req = self.request(futures::stream::iter(vec![first]));
            let resp = self.client().do_put(req).await?;
            self.remember(resp.metadata());
            let mut s = resp.into_inner();
            let result = s.message().await?.unwrap();
            DoPutUpdateResult::decode(result.app_metadata).unwrap();
            Vec::new()
        } else {
            let cmd = CommandPreparedStatementQuery {
                prepared_statement_handle: handle.clone(),
            };
            let req = self.request(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec()));
            let resp = self.client().get_flight_info(req).await?;
            self.remember(resp.metadata());
            let info = resp.into_inner();
            let mut batches = Vec::new();
            for ep in info.endpoint {
                // A new client per endpoint, with the credential the middleware holds now.
                let fresh = Channel::from_shared(self.url.clone())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let req = self.request(ep.ticket.unwrap());
                let resp = FlightServiceClient::new(fresh).do_get(req).await?;
                let data: Vec<FlightData> = resp.into_inner().try_collect().await?;
                batches.extend(flight_data_to_batches(&data).unwrap());
            }
            batches
        };
        let close = ActionClosePreparedStatementRequest {
            prepared_statement_handle: handle,
        };
        self.action("ClosePreparedStatement", close.as_any().encode_to_vec())
            .await;
        Ok(out)
    }

    async fn set_catalog(&mut self, catalog: &str) {
        let mut opts = std::collections::HashMap::new();
        opts.insert(
            "catalog".to_string(),
            fs::SessionOptionValue {
                option_value: Some(fs::session_option_value::OptionValue::StringValue(
                    catalog.into(),
                )),
            },
        );
        let body = fs::SetSessionOptionsRequest {
            session_options: opts,
        }
        .encode_to_vec();
        let out = self.action("SetSessionOptions", body).await;
        let result = fs::SetSessionOptionsResult::decode(out[0].clone()).unwrap();
        assert!(result.errors.is_empty(), "{:?}", result.errors);
    }
}

fn count(batches: &[RecordBatch]) -> i64 {
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

async fn session_sticks(url: &str, login: Option<(&str, &str)>) {
    let mut c = JdbcLike::connect(url, login).await;
    assert_eq!(c.credential.is_some(), login.is_some());
    for sql in [
        "CREATE HIVE IF NOT EXISTS jh",
        "CREATE BOX IF NOT EXISTS jh.jb",
        "USE jh.jb",
        "CREATE TABLE t (a INT)",
        "INSERT INTO t VALUES (1), (2)",
    ] {
        c.execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // The unqualified name resolves in jh.jb: USE reached every later statement, and the
    // ticket fetched on a new connection carried it.
    assert_eq!(
        count(&c.execute("SELECT count(*) FROM t").await.unwrap()),
        2
    );
    assert_eq!(
        count(&c.execute("SELECT count(*) FROM jh.jb.t").await.unwrap()),
        2
    );
    // setCatalog (the navigator) moves the session back to the default hive.
    c.set_catalog("default").await;
    let err = c.execute("SELECT count(*) FROM t").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    c.execute("USE BOX default").await.unwrap();
    c.execute("CREATE TABLE t2 AS SELECT 7 AS n").await.unwrap();
    assert_eq!(
        count(
            &c.execute("SELECT count(*) FROM default.default.t2")
                .await
                .unwrap()
        ),
        1
    );
    // A second connection starts in default.default: sessions are per connection.
    let mut other = JdbcLike::connect(url, login).await;
    assert_eq!(
        count(&other.execute("SELECT count(*) FROM t2").await.unwrap()),
        1
    );
    other.execute("DROP TABLE t2").await.unwrap();
    c.execute("DROP BOX jh.jb CASCADE").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jdbc_like_client_keeps_its_session_with_and_without_auth() {
    let dir = tempfile::tempdir().unwrap();
    let open = Server::start(dir.path().join("open").to_str().unwrap(), &[], &[]);
    session_sticks(&open.url(), None).await;

    let user = format!("dora:{}", hash("map reader"));
    let guarded = Server::start(
        dir.path().join("guarded").to_str().unwrap(),
        &["--user", &user],
        &[],
    );
    session_sticks(&guarded.url(), Some(("dora", "map reader"))).await;
}
