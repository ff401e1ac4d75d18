//! The gateway's HTTP contract against a real nats-server, with the gateway in-process and no
//! scheduler (one test plays the scheduler's part on the wire by hand).

use std::time::Duration;

use api_gateway::Config;
use async_nats::jetstream;
use futures::StreamExt as _;
use messages::api::templates::GetTemplate;
use messages::headers::{MSG_ID, SCHEMA_VERSION_HEADER};
use messages::session::{CreateSession, NO_HEALTHY_NODES, Session, SessionStatus};
use messages::subjects;
use messages::template::{NetworkMode, Resources, Template, TemplateDefinition};
use messages::{ApiRequest as _, ErrorBody, ErrorCode, NodeId, Reply, SessionId};
use reqwest::StatusCode;
use sandbox_ops::testkit::NatsServer;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TEMPLATE_ID: &str = "python-basic";

/// A gateway running in this process until [`TestGateway::stop`].
struct TestGateway {
    base: String,
    cancel: CancellationToken,
    running: api_gateway::Running,
}

impl TestGateway {
    async fn start(nats: &NatsServer, create_wait: Duration, max_body_bytes: usize) -> Self {
        let config = Config {
            listen: "127.0.0.1:0".parse().expect("a socket address"),
            nats_url: nats.url(),
            create_wait,
            request_timeout: Duration::from_secs(2),
            max_body_bytes,
            max_file_bytes: 1024 * 1024,
            internal_listen: "127.0.0.1:0".parse().expect("a socket address"),
            internal_token: None,
            internal_token_file: None,
        };
        let cancel = CancellationToken::new();
        let running = api_gateway::start(config, cancel.clone())
            .await
            .expect("the gateway starts");
        Self {
            base: format!("http://{}", running.local_addr()),
            cancel,
            running,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.running
            .wait()
            .await
            .expect("the gateway stops cleanly");
    }
}

async fn connect(nats: &NatsServer) -> async_nats::Client {
    async_nats::connect(nats.url())
        .await
        .expect("the test connects to NATS")
}

/// How many create requests the SESSIONS stream holds.
async fn stored_creates(bus: &async_nats::Client) -> u64 {
    let mut stream = jetstream::new(bus.clone())
        .get_stream(subjects::sessions_stream())
        .await
        .expect("the gateway made the SESSIONS stream");
    stream.info().await.expect("stream info").state.messages
}

/// Asserts `response` has `status` and an `{"error": {"code", "message"}}` body; returns the
/// error object.
async fn expect_error(response: reqwest::Response, status: StatusCode, what: &str) -> Value {
    assert_eq!(response.status(), status, "{what}");
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: content type {content_type:?}"
    );
    let body: Value = response.json().await.expect("a JSON error body");
    let error = body["error"].clone();
    assert!(error["code"].is_string(), "{what}: no error.code in {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no error.message in {body}"
    );
    error
}

#[tokio::test]
async fn bad_input_gets_json_errors_and_stores_nothing() {
    let nats = NatsServer::start().expect("nats-server starts");
    let max_body_bytes = 64 * 1024;
    let gateway = TestGateway::start(&nats, Duration::from_secs(5), max_body_bytes).await;
    let http = reqwest::Client::new();
    let sessions = gateway.url("/api/v1/sessions");
    let too_large = json!({"template_id": TEMPLATE_ID, "env": {"BIG": "x".repeat(max_body_bytes)}});

    let json_posts = [
        (
            "malformed JSON",
            "{\"template_id\":".to_owned(),
            400,
            "invalid_request",
        ),
        (
            "wrong type",
            r#"{"template_id": 5}"#.to_owned(),
            422,
            "invalid_request",
        ),
        ("missing field", "{}".to_owned(), 422, "invalid_request"),
        (
            "unknown field",
            r#"{"template_id": "t", "image": "evil"}"#.to_owned(),
            422,
            "invalid_request",
        ),
        (
            "invalid env name",
            r#"{"template_id": "t", "env": {"1BAD": "v"}}"#.to_owned(),
            422,
            "invalid_request",
        ),
        (
            "empty template id",
            r#"{"template_id": ""}"#.to_owned(),
            422,
            "invalid_request",
        ),
        ("too large", too_large.to_string(), 413, "payload_too_large"),
    ];
    for (what, body, status, code) in json_posts {
        let response = http
            .post(&sessions)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("the gateway answers");
        let status = StatusCode::from_u16(status).expect("a status");
        let error = expect_error(response, status, what).await;
        assert_eq!(error["code"], code, "{what}");
    }

    let response = http
        .post(&sessions)
        .body(r#"{"template_id": "t"}"#)
        .send()
        .await
        .expect("the gateway answers");
    let unsupported = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    let error = expect_error(response, unsupported, "no content type").await;
    assert_eq!(error["code"], "unsupported_media_type");

    let response = http
        .post(format!("{sessions}?wait=maybe"))
        .json(&json!({"template_id": "t"}))
        .send()
        .await
        .expect("the gateway answers");
    expect_error(response, StatusCode::BAD_REQUEST, "bad wait flag").await;

    let response = http
        .get(gateway.url("/api/v1/nothing-here"))
        .send()
        .await
        .expect("the gateway answers");
    let error = expect_error(response, StatusCode::NOT_FOUND, "unknown route").await;
    assert_eq!(error["code"], "not_found");

    let response = http
        .patch(&sessions)
        .send()
        .await
        .expect("the gateway answers");
    let error = expect_error(response, StatusCode::METHOD_NOT_ALLOWED, "wrong method").await;
    assert_eq!(error["code"], "method_not_allowed");

    for query in [
        "status=sleeping",
        "limit=0",
        "limit=10000",
        "limit=ten",
        "offset=-1",
        "colour=blue",
    ] {
        let response = http
            .get(format!("{sessions}?{query}"))
            .send()
            .await
            .expect("the gateway answers");
        let error = expect_error(response, StatusCode::BAD_REQUEST, query).await;
        assert_eq!(error["code"], "invalid_request", "{query}");
    }

    let bus = connect(&nats).await;
    assert_eq!(stored_creates(&bus).await, 0, "bad input stored a request");
    gateway.stop().await;
}

#[tokio::test]
async fn without_a_scheduler_reads_and_creates_are_unavailable() {
    let nats = NatsServer::start().expect("nats-server starts");
    let gateway = TestGateway::start(&nats, Duration::from_secs(5), 1024 * 1024).await;
    let http = reqwest::Client::new();

    let health = http
        .get(gateway.url("/healthz"))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(health.status(), StatusCode::OK);
    let health: Value = health.json().await.expect("JSON health");
    assert_eq!(health, json!({"status": "ok", "nats": "connected"}));

    let some_session = uuid::Uuid::now_v7();
    for path in [
        format!("/api/v1/sessions/{some_session}"),
        "/api/v1/sessions".to_owned(),
        "/api/v1/templates".to_owned(),
        "/api/v1/nodes/docker-local".to_owned(),
    ] {
        let response = http
            .get(gateway.url(&path))
            .send()
            .await
            .expect("the gateway answers");
        let error = expect_error(response, StatusCode::SERVICE_UNAVAILABLE, &path).await;
        assert_eq!(error["code"], "unavailable", "{path}");
    }

    // Ids that cannot exist are not found without asking anyone.
    for path in ["/api/v1/sessions/not.an.id", "/api/v1/nodes/a%20b"] {
        let response = http
            .get(gateway.url(path))
            .send()
            .await
            .expect("the gateway answers");
        let error = expect_error(response, StatusCode::NOT_FOUND, path).await;
        assert_eq!(error["code"], "not_found", "{path}");
    }

    let response = http
        .post(gateway.url("/api/v1/sessions"))
        .json(&json!({"template_id": TEMPLATE_ID}))
        .send()
        .await
        .expect("the gateway answers");
    let error = expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "create").await;
    assert_eq!(error["code"], "unavailable");

    let bus = connect(&nats).await;
    assert_eq!(stored_creates(&bus).await, 0, "a refused create was stored");
    gateway.stop().await;
}

fn template() -> Template {
    let now = chrono::Utc::now();
    Template {
        definition: TemplateDefinition {
            id: TEMPLATE_ID.to_owned(),
            name: "Python".to_owned(),
            description: String::new(),
            image_url: "sandbox-executor:v1.0".to_owned(),
            resources: Resources {
                cpu_cores: 1.0,
                memory_mb: 512,
                pids_limit: 128,
                ..Resources::default()
            },
            network: NetworkMode::SandboxNetwork,
            env: Default::default(),
            timeout_seconds: 3600,
            warm_pool_size: 0,
            runtime: Default::default(),
            egress: Default::default(),
        },
        created_at: now,
        updated_at: now,
    }
}

/// A session as a scheduler would announce it.
fn announced(id: &SessionId, status: SessionStatus) -> Session {
    Session {
        status,
        ..Session::pending(
            id.clone(),
            TEMPLATE_ID,
            &template().container_spec_with(&Default::default()),
            3600,
            chrono::Utc::now(),
        )
    }
}

/// Answers template reads the way a scheduler replica does: the one template, or not found.
async fn serve_templates(bus: async_nats::Client) -> tokio::task::JoinHandle<()> {
    let mut requests = bus
        .queue_subscribe(
            GetTemplate::SUBJECT,
            subjects::scheduler_queue_group().to_owned(),
        )
        .await
        .expect("subscribing to template reads");
    bus.flush().await.expect("the subscription is registered");
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let request: GetTemplate =
                messages::decode(&message.payload).expect("a GetTemplate request");
            let reply = if request.template_id == TEMPLATE_ID {
                Reply::Ok(template())
            } else {
                Reply::Error(ErrorBody::new(ErrorCode::NotFound, "no such template"))
            };
            service_kit::bus::respond(&bus, &message, &reply)
                .await
                .expect("answering a template read");
        }
    })
}

/// Takes the next create request from the SESSIONS stream and checks how it was published.
async fn take_create(requests: &mut jetstream::consumer::pull::Stream) -> CreateSession {
    let message = tokio::time::timeout(Duration::from_secs(10), requests.next())
        .await
        .expect("a create request within 10 s")
        .expect("the consumer stream is open")
        .expect("a create request");
    let create: CreateSession =
        messages::decode(&message.payload).expect("the request decodes as CreateSession");
    let headers = message.headers.as_ref().expect("the request has headers");
    assert_eq!(
        headers.get(MSG_ID).map(|value| value.as_str()),
        Some(create.session_id.as_str()),
        "Nats-Msg-Id is the session id"
    );
    assert!(headers.get(SCHEMA_VERSION_HEADER).is_some());
    message.double_ack().await.expect("acking the request");
    create
}

/// The answer to a POST sent from a task of its own.
async fn answered(
    post: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) -> reqwest::Response {
    post.await
        .expect("the POST task")
        .expect("the gateway answers")
}

#[tokio::test]
async fn create_answers_from_the_status_the_scheduler_announces() {
    let nats = NatsServer::start().expect("nats-server starts");
    let gateway = TestGateway::start(&nats, Duration::from_secs(10), 1024 * 1024).await;
    let impatient = TestGateway::start(&nats, Duration::from_millis(300), 1024 * 1024).await;
    let bus = connect(&nats).await;
    let template_server = serve_templates(bus.clone()).await;
    let consumer = jetstream::new(bus.clone())
        .get_stream(subjects::sessions_stream())
        .await
        .expect("the SESSIONS stream")
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("http-api-test".to_owned()),
            ..Default::default()
        })
        .await
        .expect("a consumer on SESSIONS");
    let mut requests = consumer.messages().await.expect("pulling create requests");
    let http = reqwest::Client::new();
    let post = |gateway: &TestGateway, query: &str, body: Value| {
        http.post(gateway.url(&format!("/api/v1/sessions{query}")))
            .json(&body)
            .send()
    };

    // Round 1: the session runs.
    let answer = tokio::spawn(post(
        &gateway,
        "",
        json!({"template_id": TEMPLATE_ID, "env": {"GREETING": "hello"}}),
    ));
    let create = take_create(&mut requests).await;
    assert_eq!(create.template_id, TEMPLATE_ID);
    assert_eq!(
        create.env.get("GREETING").map(String::as_str),
        Some("hello")
    );
    let id = create.session_id;
    let status_subject = subjects::session_status(&id);
    service_kit::bus::publish(
        &bus,
        status_subject.clone(),
        &announced(&id, SessionStatus::Creating),
    )
    .await
    .expect("announcing creating");
    let mut running = announced(&id, SessionStatus::Running);
    running.container_id = Some("c0ffee".to_owned());
    running.runtime_node = Some(NodeId::parse("docker-local").expect("a node id"));
    service_kit::bus::publish(&bus, status_subject, &running)
        .await
        .expect("announcing running");
    let response = answered(answer).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let session: Value = response.json().await.expect("a JSON session");
    assert_eq!(session["id"], id.as_str());
    assert_eq!(session["status"], "running");
    assert_eq!(session["container_id"], "c0ffee");
    assert_eq!(session["runtime_node"], "docker-local");

    // Round 2: no node can take it.
    let answer = tokio::spawn(post(
        &gateway,
        "?wait=true",
        json!({"template_id": TEMPLATE_ID}),
    ));
    let id = take_create(&mut requests).await.session_id;
    let mut failed = announced(&id, SessionStatus::Failed);
    failed.failure_code = Some(ErrorCode::NoHealthyNodes);
    failed.failure_reason = Some(NO_HEALTHY_NODES.to_owned());
    service_kit::bus::publish(&bus, subjects::session_status(&id), &failed)
        .await
        .expect("announcing failed");
    let response = answered(answer).await;
    let error = expect_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "no healthy nodes",
    )
    .await;
    assert_eq!(error["code"], "no_healthy_nodes");
    assert_eq!(error["message"], NO_HEALTHY_NODES);
    assert_eq!(error["session_id"], id.as_str());

    // Round 3: not waiting answers at once with the pending session, shaped like GET's.
    let response = post(&gateway, "?wait=false", json!({"template_id": TEMPLATE_ID}))
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let pending: Session = response.json().await.expect("a session");
    assert_eq!(pending.status, SessionStatus::Pending);
    assert_eq!(pending.container_id, None);
    assert_eq!(pending.runtime_node, None);
    assert_eq!(pending.image, "sandbox-executor:v1.0");
    assert_eq!(take_create(&mut requests).await.session_id, pending.id);

    // Round 4: an unknown template is refused and nothing is stored.
    let response = post(&gateway, "", json!({"template_id": "nope"}))
        .await
        .expect("the gateway answers");
    let error = expect_error(response, StatusCode::NOT_FOUND, "unknown template").await;
    assert_eq!(error["code"], "not_found");
    assert_eq!(error["message"], "template 'nope' not found");

    // Round 5: nothing is announced within the create wait (and no scheduler answers the last
    // look): 504, with the id to poll.
    let response = post(&impatient, "", json!({"template_id": TEMPLATE_ID}))
        .await
        .expect("the gateway answers");
    let error = expect_error(response, StatusCode::GATEWAY_TIMEOUT, "create wait ran out").await;
    let id = take_create(&mut requests).await.session_id;
    assert_eq!(error["code"], "timeout");
    assert_eq!(error["session_id"], id.as_str());
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("GET /api/v1/sessions/{id}")),
        "{message}"
    );

    assert_eq!(stored_creates(&bus).await, 0, "a request was left over");
    template_server.abort();
    impatient.stop().await;
    gateway.stop().await;
}
