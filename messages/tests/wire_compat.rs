//! Every payload survives a round trip, and readers tolerate what newer writers add.

use std::collections::BTreeMap;
use std::fmt::Debug;

use chrono::{TimeZone, Utc};
use messages::api::executions::{
    ExecutionPage, GetExecution, ListExecutions, RecordExecutionResult, StartExecution,
};
use messages::api::nodes::{DeclareNode, GetNode, ListNodes, NodeDeclaration, SetNodeDrain};
use messages::api::sessions::{
    DeleteSession, GetSession, ListSessions, SessionPage, SetSessionTimeout,
};
use messages::api::templates::{
    CreateTemplate, DeleteTemplate, GetTemplate, ListTemplates, TemplateUpdated, UpdateTemplate,
};
use messages::api::{PageInfo, PageRequest};
use messages::egress::Egress;
use messages::execution::{
    Execution, ExecutionOutput, ExecutionResult, ExecutionStarted, ExecutionStatus, Language,
    OutputStream, RunExecution,
};
use messages::files::{
    AbortUpload, DeleteFile, FileChunk, FileDeleted, FileEntry, FileKind, FileListing,
    FileWriteProgress, ListFiles, ReadFileChunk, UploadAborted, WorkspacePath, WriteFileChunk,
};
use messages::node::{
    ContainerCreated, ContainerExited, ContainerInventory, ContainerReady, ContainerRemoved,
    CreateContainer, DiscoverNodes, ExitReason, Heartbeat, HostFigures, NodeHealth, NodeInfo,
    NodeRegistration, NodeSelfStatus, NodeUpdated, NodeUsage, RegistrationAccepted,
    RemoveContainer, ReportedContainer,
};
use messages::session::{CreateSession, Session, SessionStatus};
use messages::template::{
    ContainerSpec, NetworkMode, Resources, Runtime, Template, TemplateDefinition,
};
use messages::{ErrorBody, ErrorCode, ExecutionId, NodeId, Reply, SessionId, decode, encode};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

fn node() -> NodeId {
    NodeId::parse("docker-local").expect("valid node id")
}

fn session_id() -> SessionId {
    SessionId::parse("0193a1b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b").expect("valid session id")
}

fn at() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 15, 10, 30, 0)
        .single()
        .expect("valid time")
}

fn usage() -> NodeUsage {
    NodeUsage {
        after_heartbeat: 41,
        running_containers: 2,
        allocated_cpu_cores: 1.5,
        allocated_memory_mb: 768,
    }
}

fn resources() -> Resources {
    Resources {
        cpu_cores: 0.5,
        memory_mb: 256,
        pids_limit: 128,
        disk_mb: 512,
        cpu_request_cores: Some(0.05),
        memory_request_mb: Some(64),
    }
}

fn egress() -> Egress {
    Egress {
        allow: vec!["pypi.org".into(), "198.18.0.0/15".into()],
        deny: vec!["198.18.1.1".into()],
    }
}

fn session() -> Session {
    Session {
        id: session_id(),
        template_id: "python-basic".into(),
        status: SessionStatus::Running,
        runtime_node: Some(node()),
        container_id: Some("abc123".into()),
        image: "sandbox-executor:v1.0".into(),
        resources: resources(),
        network: NetworkMode::SandboxNetwork,
        runtime: Runtime::Gvisor,
        failure_code: None,
        failure_reason: None,
        created_at: at(),
        updated_at: at(),
        started_at: Some(at()),
        ended_at: None,
        timeout_seconds: 300,
        expires_at: Some(at()),
    }
}

fn definition() -> TemplateDefinition {
    TemplateDefinition {
        id: "python-basic".into(),
        name: "Python".into(),
        description: String::new(),
        image_url: "sandbox-executor:v1.0".into(),
        resources: resources(),
        network: NetworkMode::None,
        env: BTreeMap::from([("LANG".into(), "C.UTF-8".into())]),
        timeout_seconds: 300,
        warm_pool_size: 2,
        runtime: Runtime::Gvisor,
        egress: Egress::default(),
    }
}

fn template() -> Template {
    Template {
        definition: definition(),
        created_at: at(),
        updated_at: at(),
    }
}

fn node_info() -> NodeInfo {
    NodeInfo {
        node_id: node(),
        hostname: "localhost".into(),
        runtime_type: "docker".into(),
        ip_address: "127.0.0.1".into(),
        api_endpoint: "unix:///var/run/docker.sock".into(),
        status: NodeHealth::Online,
        total_cpu_cores: 8.0,
        total_memory_mb: 16384,
        max_containers: 100,
        running_containers: 1,
        allocated_cpu_cores: 0.5,
        allocated_memory_mb: 256,
        host: Some(host_figures()),
        runtimes: vec![Runtime::Runc, Runtime::Gvisor],
        network_refusal: Some("iptables is missing".into()),
        cached_images: vec!["sandbox-executor:v1.0".into()],
        labels: BTreeMap::new(),
        daemon_version: "0.1.0".into(),
        heartbeat_interval_ms: 5000,
        last_heartbeat_at: Some(at()),
        registered_at: at(),
        declared: true,
        drained: false,
    }
}

fn execution_id() -> ExecutionId {
    ExecutionId::parse("0193a1b2-7c4d-7e8f-9a0b-000000000042").expect("valid")
}

fn execution() -> Execution {
    Execution {
        id: execution_id(),
        session_id: session_id(),
        language: Language::Python,
        code: "print(6*7)".into(),
        status: ExecutionStatus::Completed,
        exit_code: Some(0),
        stdout: "42\n".into(),
        stderr: String::new(),
        truncated: false,
        error: None,
        state_lost: false,
        return_value: Some("42".into()),
        fresh: false,
        timeout_secs: 30,
        runtime_node: Some(node()),
        duration_ms: Some(3),
        created_at: at(),
        started_at: Some(at()),
        completed_at: Some(at()),
        metrics: Some(serde_json::json!({"cpu_ms": 2.5})),
    }
}

fn result() -> ExecutionResult {
    ExecutionResult {
        stdout: "42\n".into(),
        exit_code: Some(0),
        status: ExecutionStatus::Completed,
        duration_ms: Some(3),
        started_at: Some(at()),
        ..ExecutionResult::error(execution_id(), "unused")
    }
}

fn path(value: &str) -> WorkspacePath {
    WorkspacePath::parse(value).expect("valid path")
}

fn file_entry() -> FileEntry {
    FileEntry {
        name: "data.csv".into(),
        path: "in/data.csv".into(),
        size: 12,
        kind: FileKind::File,
        modified_at: at(),
    }
}

fn host_figures() -> HostFigures {
    HostFigures {
        limit_cpu_cores: 4.0,
        limit_memory_mb: 2048,
        memory_available_mb: 20000,
        disk_available_mb: 50000,
    }
}

fn registration() -> NodeRegistration {
    NodeRegistration {
        node_id: node(),
        hostname: "localhost".into(),
        runtime_type: "docker".into(),
        ip_address: "127.0.0.1".into(),
        api_endpoint: "unix:///var/run/docker.sock".into(),
        total_cpu_cores: 8.0,
        total_memory_mb: 16384,
        max_containers: 100,
        cached_images: vec!["sandbox-executor:v1.0".into()],
        labels: BTreeMap::from([("zone".into(), "a".into())]),
        daemon_version: "0.1.0".into(),
        heartbeat_interval_ms: 5000,
        started_at: at(),
        inventory: Some(ContainerInventory {
            listed_at: at(),
            containers: vec![ReportedContainer {
                container_id: "abc123".into(),
                session_id: Some(session_id()),
                running: false,
                exit_code: Some(137),
                oom_killed: true,
            }],
        }),
        runtimes: vec![Runtime::Runc, Runtime::Gvisor],
        network_refusal: None,
    }
}

/// Ten items from `offset`.
fn page(offset: u32) -> PageRequest {
    PageRequest { limit: 10, offset }
}

/// The first page of ten, of a list of one.
fn first_page_of_one() -> PageInfo {
    PageInfo {
        total: 1,
        page: page(0),
    }
}

/// Encodes and decodes `value`, then again as a newer writer would send it: with a field this
/// build does not know in the struct it carries.
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: T) {
    let bytes = encode(&value).expect("encodes");
    let back: T = decode(&bytes).expect("decodes");
    assert_eq!(back, value);
    let mut json = serde_json::to_value(&value).expect("to json");
    if let Some(fields) = carried_struct(&mut json) {
        fields.insert(
            "field_from_the_future".into(),
            serde_json::json!({"x": [1, 2]}),
        );
        let back: T =
            decode(&encode(&json).expect("encodes")).expect("decodes with an unknown field");
        assert_eq!(back, value);
    }
}

/// The struct a payload carries: itself, or the one inside a `Reply` or a list.
fn carried_struct(json: &mut Value) -> Option<&mut Map<String, Value>> {
    let is_reply = json
        .as_object()
        .is_some_and(|map| map.len() == 1 && (map.contains_key("ok") || map.contains_key("error")));
    if is_reply {
        return json
            .as_object_mut()?
            .values_mut()
            .next()
            .and_then(carried_struct);
    }
    match json {
        Value::Object(map) => Some(map),
        Value::Array(items) => items.first_mut().and_then(carried_struct),
        _ => None,
    }
}

#[test]
fn every_payload_round_trips() {
    round_trips(registration());
    round_trips(Reply::Ok(RegistrationAccepted {
        node_id: node(),
        declared: true,
        total_cpu_cores: 8.0,
        total_memory_mb: 16384,
        max_containers: 100,
    }));
    round_trips(Reply::<RegistrationAccepted>::Error(ErrorBody::new(
        ErrorCode::Forbidden,
        "node docker-local is not declared",
    )));
    round_trips(NodeUpdated { node_id: node() });
    round_trips(TemplateUpdated {
        template_id: "python-basic".into(),
    });
    // A declaration has the seed's fields of a registration: one reads as the other.
    let declaration: NodeDeclaration =
        serde_json::from_value(serde_json::to_value(registration()).expect("to json"))
            .expect("a registration reads as a declaration");
    assert_eq!(declaration.node_id, node());
    assert_eq!(declaration.max_containers, 100);
    round_trips(DeclareNode { declaration });
    round_trips(SetNodeDrain {
        node_id: node(),
        drained: true,
    });
    let definition = TemplateDefinition {
        id: "python-basic".into(),
        name: "Python".into(),
        description: String::new(),
        image_url: "sandbox-executor:v1.0".into(),
        resources: resources(),
        network: NetworkMode::SandboxNetwork,
        env: BTreeMap::new(),
        timeout_seconds: 60,
        warm_pool_size: 1,
        runtime: Runtime::Runc,
        egress: egress(),
    };
    round_trips(CreateTemplate {
        definition: definition.clone(),
    });
    round_trips(UpdateTemplate { definition });
    round_trips(DeleteTemplate {
        template_id: "python-basic".into(),
    });
    round_trips(SetSessionTimeout {
        session_id: session_id(),
        timeout_seconds: 600,
    });
    round_trips(Heartbeat {
        node_id: node(),
        timestamp: at(),
        sequence: 7,
        running_containers: 3,
        allocated_cpu_cores: 1.5,
        allocated_memory_mb: 768,
        status: NodeSelfStatus::Online,
        warm_containers: 1,
        host: Some(host_figures()),
    });
    round_trips(DiscoverNodes {
        node_id: Some(node()),
        images_only: true,
    });
    round_trips(ContainerReady {
        container_id: "abc123".into(),
        session_id: session_id(),
        node_id: node(),
        executor_url: Some("http://sandbox-x:8080".into()),
        ready_at: at(),
    });
    round_trips(ContainerExited {
        container_id: "abc123".into(),
        session_id: session_id(),
        node_id: node(),
        exit_code: Some(137),
        reason: ExitReason::OomKilled,
        exited_at: at(),
    });
    round_trips(CreateContainer {
        session_id: session_id(),
        spec: ContainerSpec {
            image: "sandbox-executor:v1.0".into(),
            resources: resources(),
            network: NetworkMode::SandboxNetwork,
            env: BTreeMap::from([("A".into(), "1".into())]),
            runtime: Runtime::Gvisor,
            egress: egress(),
        },
    });
    round_trips(Reply::Ok(ContainerCreated {
        session_id: session_id(),
        node_id: node(),
        container_id: "abc123".into(),
        existed: false,
        executor_url: None,
        usage: Some(usage()),
    }));
    round_trips(RemoveContainer {
        session_id: session_id(),
    });
    round_trips(Reply::Ok(ContainerRemoved {
        session_id: session_id(),
        removed: true,
        usage: None,
    }));
    round_trips(Reply::<ContainerRemoved>::Error(ErrorBody::new(
        ErrorCode::Capacity,
        "node is full",
    )));
    round_trips(CreateSession {
        session_id: session_id(),
        template_id: "python-basic".into(),
        env: BTreeMap::new(),
        requested_at: at(),
        timeout_seconds: Some(60),
    });
    round_trips(session());
    round_trips(template());
    round_trips(GetSession {
        session_id: session_id(),
    });
    round_trips(ListSessions {
        status: Some(SessionStatus::Failed),
        template_id: Some("python-basic".into()),
        page: page(20),
    });
    round_trips(Reply::Ok(SessionPage {
        sessions: vec![session()],
        page: first_page_of_one(),
    }));
    round_trips(DeleteSession {
        session_id: session_id(),
    });
    round_trips(GetTemplate {
        template_id: "python-basic".into(),
    });
    round_trips(ListTemplates {});
    round_trips(Reply::Ok(vec![template()]));
    round_trips(GetNode { node_id: node() });
    round_trips(ListNodes {});
    round_trips(Reply::Ok(vec![node_info()]));
}

#[test]
fn every_execution_and_file_payload_round_trips() {
    round_trips(RunExecution {
        execution_id: execution_id(),
        session_id: session_id(),
        language: Language::Shell,
        code: "echo hi".into(),
        stdin: "in".into(),
        env: BTreeMap::from([("A".into(), "1".into())]),
        timeout_secs: 30,
        fresh: true,
    });
    round_trips(Reply::Ok(ExecutionStarted {
        execution_id: execution_id(),
        started_at: at(),
    }));
    round_trips(ExecutionOutput {
        execution_id: execution_id(),
        seq: 7,
        stream: OutputStream::Stderr,
        data: vec![0, 159, 146, 150, b'\n'],
    });
    round_trips(result());
    round_trips(StartExecution {
        run: RunExecution {
            execution_id: execution_id(),
            session_id: session_id(),
            language: Language::Javascript,
            code: "console.log(1)".into(),
            stdin: String::new(),
            env: BTreeMap::new(),
            timeout_secs: 5,
            fresh: false,
        },
    });
    round_trips(Reply::Ok(execution()));
    round_trips(GetExecution {
        execution_id: execution_id(),
    });
    round_trips(ListExecutions {
        session_id: session_id(),
        page: page(0),
    });
    round_trips(Reply::Ok(ExecutionPage {
        executions: vec![execution()],
        page: first_page_of_one(),
    }));
    round_trips(RecordExecutionResult { result: result() });
    round_trips(WriteFileChunk {
        session_id: session_id(),
        path: path("in/data.csv"),
        upload_id: "u1".into(),
        offset: 0,
        data: b"a,b\n1,2\n".to_vec(),
        last: true,
    });
    round_trips(Reply::Ok(FileWriteProgress {
        received: 12,
        entry: Some(file_entry()),
    }));
    round_trips(AbortUpload {
        session_id: session_id(),
        path: path("x"),
        upload_id: "u1".into(),
    });
    round_trips(Reply::Ok(UploadAborted {}));
    round_trips(ReadFileChunk {
        session_id: session_id(),
        path: path("in/data.csv"),
        offset: 4,
        length: 1024,
    });
    round_trips(Reply::Ok(FileChunk {
        data: b"1,2\n".to_vec(),
        size: 12,
        eof: true,
    }));
    round_trips(ListFiles {
        session_id: session_id(),
        path: path(""),
    });
    round_trips(Reply::Ok(FileListing {
        path: "in".into(),
        entries: vec![file_entry()],
    }));
    round_trips(DeleteFile {
        session_id: session_id(),
        path: path("in"),
    });
    round_trips(Reply::Ok(FileDeleted { path: "in".into() }));
}

#[test]
fn a_path_that_escapes_the_workspace_is_refused_on_the_wire() {
    let json = serde_json::json!({"session_id": "s1", "path": "../etc/passwd"});
    let result: Result<ListFiles, _> = decode(&encode(&json).expect("encodes"));
    assert!(result.is_err());
}

#[test]
fn an_unknown_field_inside_a_nested_struct_is_ignored() {
    let mut json = serde_json::to_value(Reply::Ok(session())).expect("to json");
    json["ok"]["resources"]["gpu_count"] = 1.into();
    json["ok"]["placement_hint"] = "zone-a".into();
    let back: Reply<Session> = decode(&encode(&json).expect("encodes")).expect("decodes");
    assert_eq!(back, Reply::Ok(session()));
}

#[test]
fn unknown_enum_values_from_a_newer_writer_decode_as_unknown() {
    let mut json = serde_json::to_value(Heartbeat {
        node_id: node(),
        timestamp: at(),
        sequence: 1,
        running_containers: 0,
        allocated_cpu_cores: 0.0,
        allocated_memory_mb: 0,
        status: NodeSelfStatus::Online,
        warm_containers: 0,
        host: None,
    })
    .expect("to json");
    json["status"] = "hibernating".into();
    let back: Heartbeat = decode(&encode(&json).expect("encodes")).expect("decodes");
    assert_eq!(back.status, NodeSelfStatus::Unknown);

    let error: ErrorBody =
        decode(&encode(&serde_json::json!({"code": "quota", "message": "m"})).expect("encodes"))
            .expect("decodes");
    assert_eq!(error.code, ErrorCode::Unknown);
}

#[test]
fn an_invalid_id_in_a_payload_is_refused() {
    let json = serde_json::json!({"node_id": "a.b"});
    let result: Result<GetNode, _> = decode(&encode(&json).expect("encodes"));
    assert!(result.is_err());
}

#[test]
fn payloads_are_maps_with_field_names() {
    let bytes = encode(&GetSession {
        session_id: session_id(),
    })
    .expect("encodes");
    // 0x81: a one-entry map, then the field name as a string.
    assert_eq!(bytes[0], 0x81);
    assert!(bytes.windows(10).any(|w| w == b"session_id"));
}

#[test]
fn error_codes_parse_back_from_text() {
    assert_eq!(
        ErrorCode::parse("no_healthy_nodes"),
        ErrorCode::NoHealthyNodes
    );
    assert_eq!(ErrorCode::parse("nonsense"), ErrorCode::Unknown);
}

#[test]
fn bytes_that_are_not_one_payload_are_refused() {
    assert!(messages::codec::to_json(b"hello").is_err());
    let mut bytes = encode(&GetSession {
        session_id: session_id(),
    })
    .expect("encodes");
    bytes.push(0xc0);
    assert!(decode::<GetSession>(&bytes).is_err());
    assert!(decode::<GetSession>(&[]).is_err());
}

/// A template's definition and a start request's run travel inline, as they did before they
/// were their own types: the map's keys are the fields themselves.
#[test]
fn flattened_parts_keep_the_wire_shape() {
    let as_map = |bytes: Vec<u8>| -> Map<String, Value> {
        match messages::codec::to_json(&bytes).expect("a payload") {
            Value::Object(map) => map,
            other => panic!("not a map: {other}"),
        }
    };
    let template = as_map(encode(&template()).expect("encodes"));
    for key in [
        "id",
        "name",
        "image_url",
        "resources",
        "warm_pool_size",
        "created_at",
    ] {
        assert!(
            template.contains_key(key),
            "template lacks {key}: {template:?}"
        );
    }
    assert!(!template.contains_key("definition"));
    let start = as_map(
        encode(&StartExecution {
            run: RunExecution {
                execution_id: execution_id(),
                session_id: session_id(),
                language: Language::Python,
                code: "1".into(),
                stdin: String::new(),
                env: BTreeMap::new(),
                timeout_secs: 5,
                fresh: false,
            },
        })
        .expect("encodes"),
    );
    for key in [
        "execution_id",
        "session_id",
        "language",
        "code",
        "timeout_secs",
    ] {
        assert!(start.contains_key(key), "start lacks {key}: {start:?}");
    }
}
