//! The method catalog against the Temporal API itself.
//!
//! The catalog's field paths are bare protobuf field numbers, so nothing in the Rust build checks
//! them. These tests take the descriptors of the Temporal API from the Python SDK (`temporalio`,
//! which ships the generated code) and check that the catalog lists every RPC, that every path
//! names the field it claims to, and that `inspect` reads back, from requests serialized by the
//! real generated classes, exactly what the server would see.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::LazyLock;

use flowgate::temporal::catalog::{
    self, Access, CATALOG, MethodSpec, ResourceSpec, Stamp, TaskQueueRef, all_actions, lookup,
};
use flowgate::temporal::inspect::{self, Call};
use serde::Deserialize;

const SETUP_HINT: &str = "these tests need a Python with the packages of requirements.txt (the Temporal Python SDK): \
                          run them through scripts/test.sh, or set FLOWGATE_PYTHON to the `python` of the environment \
                          that `bash scripts/setup.sh test` prints";

/// The interpreter for tests/support: $FLOWGATE_PYTHON (scripts/test.sh sets it to the Python
/// environment of requirements.txt), else `python3`, which then needs those packages itself.
fn python() -> std::ffi::OsString {
    std::env::var_os("FLOWGATE_PYTHON").filter(|python| !python.is_empty()).unwrap_or_else(|| "python3".into())
}

/// Runs a script from tests/support and returns its standard output. Never skips: a machine
/// without the SDK must not pass these tests silently.
fn run_support_script(name: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let script = Path::new(root).join("tests/support").join(name);
    let python = python();
    let output =
        Command::new(&python).arg(&script).current_dir(root).output().unwrap_or_else(|error| {
            panic!("cannot run {} {}: {error}; {SETUP_HINT}", python.display(), script.display())
        });
    assert!(
        output.status.success(),
        "{} {} failed ({}):\n{}\n{SETUP_HINT}",
        python.display(),
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("script output is UTF-8")
}

// ---------------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Descriptors {
    services: Vec<Service>,
    messages: HashMap<String, Message>,
}

#[derive(Debug, Deserialize)]
struct Service {
    name: String,
    methods: Vec<Method>,
}

#[derive(Debug, Deserialize)]
struct Method {
    name: String,
    input: String,
}

#[derive(Debug, Deserialize)]
struct Message {
    fields: Vec<Field>,
}

#[derive(Debug, Deserialize)]
struct Field {
    number: u32,
    name: String,
    #[serde(rename = "type")]
    ty: String,
    repeated: bool,
    oneof: Option<String>,
}

impl Field {
    fn message_type(&self) -> Option<&str> {
        self.ty.strip_prefix("message:")
    }
}

const WORKFLOW_EXECUTION: &str = "temporal.api.common.v1.WorkflowExecution";
const WORKFLOW_TYPE: &str = "temporal.api.common.v1.WorkflowType";
const TASK_QUEUE: &str = "temporal.api.taskqueue.v1.TaskQueue";
const WORKFLOW_QUERY: &str = "temporal.api.query.v1.WorkflowQuery";
const UPDATE_REQUEST: &str = "temporal.api.update.v1.Request";
const UPDATE_REF: &str = "temporal.api.update.v1.UpdateRef";

/// Repeated fields a path may pass through. The wire walker merges all their elements, which is
/// sound only where the server constrains the elements (ExecuteMultiOperation is exactly
/// `[start, update]`); anywhere else a repeated step is a mistake.
const REPEATED_STEPS_ALLOWED: &[(&str, &str)] =
    &[("temporal.api.workflowservice.v1.ExecuteMultiOperationRequest", "operations")];

static DESCRIPTORS: LazyLock<Descriptors> = LazyLock::new(|| {
    let json = run_support_script("temporal_descriptors.py");
    serde_json::from_str(&json).expect("temporal_descriptors.py prints the documented JSON")
});

impl Descriptors {
    fn message(&self, name: &str) -> &Message {
        self.messages.get(name).unwrap_or_else(|| panic!("message {name} is not in the descriptors"))
    }

    /// Every (service, method) pair, in proto order.
    fn methods(&self) -> impl Iterator<Item = (&Service, &Method)> {
        self.services.iter().flat_map(|service| service.methods.iter().map(move |method| (service, method)))
    }

    /// The full name of the request message of `spec`'s RPC.
    fn input_name(&self, spec: &MethodSpec) -> &str {
        self.methods()
            .find(|(service, method)| service.name == spec.service && method.name == spec.name)
            .map(|(_, method)| method.input.as_str())
            .unwrap_or_else(|| panic!("{} is not an RPC of {}", spec.name, spec.service))
    }

    fn input(&self, spec: &MethodSpec) -> &Message {
        self.message(self.input_name(spec))
    }

    /// The fields `path` walks through, starting at `message`; every step but the last must be
    /// an embedded message.
    fn resolve(&self, message: &str, path: &[u32]) -> Result<Vec<&Field>, String> {
        let mut current = message.to_owned();
        let mut fields = Vec::with_capacity(path.len());
        for (index, &number) in path.iter().enumerate() {
            let field = self
                .message(&current)
                .fields
                .iter()
                .find(|field| field.number == number)
                .ok_or_else(|| format!("{current} has no field {number}"))?;
            let last = index + 1 == path.len();
            if field.repeated && (last || !REPEATED_STEPS_ALLOWED.contains(&(current.as_str(), field.name.as_str()))) {
                return Err(format!("{current}.{} is repeated", field.name));
            }
            fields.push(field);
            if !last {
                current = field
                    .message_type()
                    .ok_or_else(|| format!("{current}.{} is a {}, not a message", field.name, field.ty))?
                    .to_owned();
            }
        }
        if fields.is_empty() {
            return Err("empty path".to_owned());
        }
        Ok(fields)
    }
}

/// Every path of a spec, with what its last field must be.
fn paths(spec: &MethodSpec) -> Vec<(&'static str, &'static [u32], &'static str)> {
    let mut out = Vec::new();
    let task_queue = |what, reference: Option<TaskQueueRef>, out: &mut Vec<_>| match reference {
        Some(TaskQueueRef::Message(path)) => out.push((what, path, "message:temporal.api.taskqueue.v1.TaskQueue")),
        Some(TaskQueueRef::Name(path)) => out.push((what, path, "string")),
        None => {}
    };
    match spec.resource {
        ResourceSpec::Cluster => {}
        ResourceSpec::Namespace { namespace } => out.push(("namespace", namespace, "string")),
        ResourceSpec::Workflow { namespace, workflow_id, workflow_type, task_queue: queue } => {
            out.push(("namespace", namespace, "string"));
            out.extend(workflow_id.map(|path| ("workflow_id", path, "string")));
            out.extend(workflow_type.map(|path| ("workflow_type", path, "string")));
            task_queue("task_queue", queue, &mut out);
        }
        ResourceSpec::TaskQueue { namespace, task_queue: queue } => {
            out.push(("namespace", namespace, "string"));
            task_queue("task_queue", Some(queue), &mut out);
        }
        ResourceSpec::Schedule { namespace, schedule_id, workflow_type, task_queue: queue } => {
            out.push(("namespace", namespace, "string"));
            out.push(("schedule_id", schedule_id, "string"));
            out.extend(workflow_type.map(|path| ("workflow_type", path, "string")));
            task_queue("task_queue", queue, &mut out);
        }
        // Only command actions, which are not RPCs, have this resource.
        ResourceSpec::NexusEndpoint => {}
    }
    out.extend(spec.signal_name.map(|path| ("signal_name", path, "string")));
    out.extend(spec.query_type.map(|path| ("query_type", path, "string")));
    out.extend(spec.update_name.map(|path| ("update_name", path, "string")));
    out.extend(spec.task_token.map(|path| ("task_token", path, "bytes")));
    out.extend(spec.namespace_id.map(|path| ("namespace_id", path, "string")));
    out
}

// ---------------------------------------------------------------------------------------------
// The catalog is the services
// ---------------------------------------------------------------------------------------------

#[test]
fn catalog_lists_every_rpc_once_in_proto_order() {
    let expected: Vec<(String, String)> =
        DESCRIPTORS.methods().map(|(service, method)| (service.name.clone(), method.name.clone())).collect();
    let actual: Vec<(String, String)> =
        CATALOG.iter().map(|spec| (spec.service.to_owned(), spec.name.to_owned())).collect();

    let expected_set: HashSet<_> = expected.iter().collect();
    let actual_set: HashSet<_> = actual.iter().collect();
    let missing: Vec<_> = expected.iter().filter(|method| !actual_set.contains(method)).collect();
    let extra: Vec<_> = actual.iter().filter(|method| !expected_set.contains(method)).collect();
    assert!(missing.is_empty(), "RPCs missing from the catalog: {missing:?}");
    assert!(extra.is_empty(), "catalog entries that are no RPC: {extra:?}");
    assert_eq!(actual_set.len(), actual.len(), "duplicate catalog entries");
    assert_eq!(actual, expected, "catalog is not in proto order");

    let counts: HashMap<&str, usize> =
        DESCRIPTORS.services.iter().map(|s| (s.name.as_str(), s.methods.len())).collect();
    assert_eq!(counts[catalog::WORKFLOW_SERVICE], 123, "WorkflowService RPC count changed: review the catalog");
    assert_eq!(counts[catalog::OPERATOR_SERVICE], 12, "OperatorService RPC count changed: review the catalog");
}

#[test]
fn action_names_are_unique() {
    let mut seen = HashSet::new();
    for spec in all_actions() {
        assert!(seen.insert(spec.action()), "action {} appears twice", spec.action());
    }
}

// ---------------------------------------------------------------------------------------------
// Every path names the field it claims to
// ---------------------------------------------------------------------------------------------

#[test]
fn every_path_resolves_to_a_field_of_the_right_type() {
    let mut errors = Vec::new();
    for spec in CATALOG {
        let input = DESCRIPTORS.input_name(spec);
        for (what, path, last_type) in paths(spec) {
            match DESCRIPTORS.resolve(input, path) {
                Err(error) => errors.push(format!("{}: {what} {path:?}: {error}", spec.name)),
                Ok(fields) => {
                    let last = fields[fields.len() - 1];
                    if last.ty != last_type {
                        errors.push(format!(
                            "{}: {what} {path:?} ends in {} ({}), not {last_type}",
                            spec.name, last.name, last.ty
                        ));
                    }
                    let expected_name = match what {
                        "namespace" => Some("namespace"),
                        "task_token" => Some("task_token"),
                        "signal_name" => Some("signal_name"),
                        "query_type" => Some("query_type"),
                        "schedule_id" => Some("schedule_id"),
                        "workflow_id" => Some("workflow_id"),
                        "update_name" | "workflow_type" => Some("name"),
                        _ => None,
                    };
                    if let Some(name) = expected_name
                        && last.name != name
                    {
                        errors.push(format!(
                            "{}: {what} {path:?} ends in field `{}`, not `{name}`",
                            spec.name, last.name
                        ));
                    }
                    if what == "namespace_id"
                        && !(path.len() == 1 && ["namespace_id", "id"].contains(&last.name.as_str()))
                    {
                        errors.push(format!(
                            "{}: namespace_id {path:?} is not a top-level `namespace_id` or `id`",
                            spec.name
                        ));
                    }
                    if what == "namespace" && path.len() != 1 {
                        errors.push(format!("{}: namespace {path:?} is not a top-level field", spec.name));
                    }
                }
            }
        }
    }
    assert!(errors.is_empty(), "bad catalog paths:\n{}", errors.join("\n"));
}

/// The path to the top-level singular field called `name`, if the request has one.
fn top_level<'a>(input: &'a Message, name: &str) -> Option<&'a Field> {
    input.fields.iter().find(|field| field.name == name && !field.repeated)
}

/// The top-level singular field whose type is the message `type_name`.
fn top_level_of_type<'a>(input: &'a Message, type_name: &str) -> Option<&'a Field> {
    input.fields.iter().find(|field| !field.repeated && field.message_type() == Some(type_name))
}

fn number_of(message: &str, name: &str) -> u32 {
    DESCRIPTORS
        .message(message)
        .fields
        .iter()
        .find(|field| field.name == name)
        .unwrap_or_else(|| panic!("{message} has no field {name}"))
        .number
}

fn workflow_parts(spec: &MethodSpec) -> (Option<&'static [u32]>, Option<&'static [u32]>, Option<TaskQueueRef>) {
    match spec.resource {
        ResourceSpec::Workflow { workflow_id, workflow_type, task_queue, .. } => {
            (workflow_id, workflow_type, task_queue)
        }
        _ => (None, None, None),
    }
}

fn task_queue_of(spec: &MethodSpec) -> Option<TaskQueueRef> {
    match spec.resource {
        ResourceSpec::Workflow { task_queue, .. } | ResourceSpec::Schedule { task_queue, .. } => task_queue,
        ResourceSpec::TaskQueue { task_queue, .. } => Some(task_queue),
        ResourceSpec::Cluster | ResourceSpec::Namespace { .. } | ResourceSpec::NexusEndpoint => None,
    }
}

/// Where a request names something flowgate decides on, the catalog reads it from exactly there.
#[test]
fn every_named_resource_and_context_field_is_read() {
    let mut errors = Vec::new();
    let check =
        |errors: &mut Vec<String>, spec: &MethodSpec, what: &str, actual: Option<&[u32]>, expected: Vec<u32>| {
            if actual != Some(expected.as_slice()) {
                errors.push(format!("{}: {what} is {actual:?}, the request has it at {expected:?}", spec.name));
            }
        };
    for spec in CATALOG {
        let input = DESCRIPTORS.input(spec);
        let name = spec.name;
        match top_level(input, "namespace") {
            Some(field) => check(&mut errors, spec, "namespace", spec.resource.namespace_path(), vec![field.number]),
            None => {
                if spec.resource != ResourceSpec::Cluster {
                    errors.push(format!("{name}: no namespace field, so the resource must be Cluster"));
                }
            }
        }
        if let Some(field) = top_level(input, "task_token") {
            check(&mut errors, spec, "task_token", spec.task_token, vec![field.number]);
        }
        // A namespace named by id: `namespace_id`, or a namespace request's own `id`
        // (`DescribeNamespaceRequest.id`). Unread, such a request would name no namespace.
        let input_name = DESCRIPTORS.input_name(spec);
        let namespace_id = top_level(input, "namespace_id").or_else(|| {
            top_level(input, "id")
                .filter(|_| input_name.ends_with("NamespaceRequest") && top_level(input, "namespace").is_some())
        });
        match namespace_id {
            Some(field) => check(&mut errors, spec, "namespace_id", spec.namespace_id, vec![field.number]),
            None if spec.namespace_id.is_some() => {
                errors.push(format!("{name}: namespace_id is read, but the request has none"))
            }
            None => {}
        }
        if let Some(field) = top_level(input, "signal_name") {
            check(&mut errors, spec, "signal_name", spec.signal_name, vec![field.number]);
        }
        if let Some(field) = top_level_of_type(input, WORKFLOW_QUERY) {
            let inner = number_of(WORKFLOW_QUERY, "query_type");
            check(&mut errors, spec, "query_type", spec.query_type, vec![field.number, inner]);
        }
        if let Some(field) = top_level_of_type(input, UPDATE_REQUEST) {
            let input_field = number_of(UPDATE_REQUEST, "input");
            let name_field = number_of("temporal.api.update.v1.Input", "name");
            check(&mut errors, spec, "update_name", spec.update_name, vec![field.number, input_field, name_field]);
        }
        if let Some(field) = top_level(input, "schedule_id") {
            match spec.resource {
                ResourceSpec::Schedule { schedule_id, .. } => {
                    check(&mut errors, spec, "schedule_id", Some(schedule_id), vec![field.number]);
                }
                _ => errors.push(format!("{name}: has schedule_id, so the resource must be Schedule")),
            }
            continue;
        }

        let (workflow_id, workflow_type, _) = workflow_parts(spec);
        let execution = top_level_of_type(input, WORKFLOW_EXECUTION)
            .map(|field| vec![field.number, number_of(WORKFLOW_EXECUTION, "workflow_id")]);
        let plain_id =
            top_level(input, "workflow_id").filter(|field| field.ty == "string").map(|field| vec![field.number]);
        let update_ref = top_level_of_type(input, UPDATE_REF).map(|field| {
            vec![
                field.number,
                number_of(UPDATE_REF, "workflow_execution"),
                number_of(WORKFLOW_EXECUTION, "workflow_id"),
            ]
        });
        if let Some(expected) = execution.or(plain_id).or(update_ref) {
            check(&mut errors, spec, "workflow_id", workflow_id, expected);
        }
        if let Some(field) = top_level_of_type(input, WORKFLOW_TYPE) {
            let inner = number_of(WORKFLOW_TYPE, "name");
            check(&mut errors, spec, "workflow_type", workflow_type, vec![field.number, inner]);
        }
        if let Some(field) = top_level(input, "task_queue") {
            let is_message = field.message_type() == Some(TASK_QUEUE);
            match task_queue_of(spec) {
                Some(TaskQueueRef::Message(path)) if is_message => {
                    check(&mut errors, spec, "task_queue", Some(path), vec![field.number]);
                }
                Some(TaskQueueRef::Name(path)) if !is_message => {
                    check(&mut errors, spec, "task_queue", Some(path), vec![field.number]);
                }
                other => errors.push(format!(
                    "{name}: task_queue is {other:?}, the request has a {} at {}",
                    field.ty, field.number
                )),
            }
        }
    }
    assert!(errors.is_empty(), "catalog misses request fields:\n{}", errors.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Access groups and long polls
// ---------------------------------------------------------------------------------------------

/// The RPCs a worker process makes: split out of `write` so polling can be granted alone.
const WORKER_RPCS: &[&str] = &[
    "PollWorkflowTaskQueue",
    "RespondWorkflowTaskCompleted",
    "RespondWorkflowTaskFailed",
    "PollActivityTaskQueue",
    "RecordActivityTaskHeartbeat",
    "RecordActivityTaskHeartbeatById",
    "RespondActivityTaskCompleted",
    "RespondActivityTaskCompletedById",
    "RespondActivityTaskFailed",
    "RespondActivityTaskFailedById",
    "RespondActivityTaskCanceled",
    "RespondActivityTaskCanceledById",
    "RespondQueryTaskCompleted",
    "ResetStickyTaskQueue",
    "ShutdownWorker",
    "PollNexusTaskQueue",
    "RespondNexusTaskCompleted",
    "RespondNexusTaskFailed",
    "RecordWorkerHeartbeat",
];

/// Namespace administration: the only `admin` actions.
const ADMIN_RPCS: &[&str] = &[
    "RegisterNamespace",
    "UpdateNamespace",
    "DeprecateNamespace",
    "AddSearchAttributes",
    "RemoveSearchAttributes",
    "DeleteNamespace",
];

#[test]
fn access_groups_follow_temporal_with_workers_split_out() {
    let mut errors = Vec::new();
    for spec in CATALOG {
        let name = spec.name;
        let expected_worker = WORKER_RPCS.contains(&name);
        if expected_worker != (spec.access == Access::Worker) {
            errors.push(format!("{name}: {:?}, worker RPC: {expected_worker}", spec.access));
        }
        let expected_admin = ADMIN_RPCS.contains(&name);
        if expected_admin != (spec.access == Access::Admin) {
            errors.push(format!("{name}: {:?}, namespace admin RPC: {expected_admin}", spec.access));
        }
        if (name == "GetSystemInfo") != (spec.access == Access::Public) {
            errors.push(format!("{name}: {:?}; only GetSystemInfo is public", spec.access));
        }
        if spec.access == Access::Ungrouped {
            errors.push(format!("{name}: catalog RPCs belong to a group"));
        }
        let cluster = spec.resource == ResourceSpec::Cluster;
        if cluster && !matches!(spec.access, Access::ClusterAdmin | Access::Public) {
            errors.push(format!("{name}: cluster-scoped but {:?}", spec.access));
        }
        if !cluster && spec.access == Access::ClusterAdmin {
            errors.push(format!("{name}: cluster-admin but namespace-scoped"));
        }
        let reads = ["Describe", "List", "Count", "Get", "Scan"].iter().any(|prefix| name.starts_with(prefix));
        if reads && !cluster && spec.access != Access::Read {
            errors.push(format!("{name}: looks read-only but is {:?}", spec.access));
        }
        let mutates =
            ["Start", "Signal", "Terminate", "Delete", "Reset", "Create", "Set", "Pause", "Unpause", "Trigger"]
                .iter()
                .any(|prefix| name.starts_with(prefix));
        if mutates && !matches!(spec.access, Access::Write | Access::Admin | Access::ClusterAdmin | Access::Worker) {
            errors.push(format!("{name}: changes state but is {:?}", spec.access));
        }
        let expected_long_poll = name.starts_with("Poll")
            || matches!(
                name,
                "GetWorkflowExecutionHistory" | "DescribeActivityExecution" | "DescribeNexusOperationExecution"
            );
        if expected_long_poll != spec.long_poll {
            errors.push(format!("{name}: long_poll {}, expected {expected_long_poll}", spec.long_poll));
        }
    }
    assert!(errors.is_empty(), "access groups:\n{}", errors.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Lookup
// ---------------------------------------------------------------------------------------------

#[test]
fn lookup_finds_every_rpc_and_catches_all_others() {
    for spec in CATALOG {
        let path = format!("/{}/{}", spec.service, spec.name);
        assert_eq!(lookup(&path), spec, "{path}");
    }
    for (path, action) in [
        ("/temporal.api.workflowservice.v1.WorkflowService/NoSuchMethod", "UnknownMethod"),
        ("/temporal.api.operatorservice.v1.OperatorService/StartWorkflowExecution", "UnknownMethod"),
        ("/temporal.api.workflowservice.v1.WorkflowService/", "UnknownMethod"),
        ("/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution/", "UnknownMethod"),
        ("temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution", "UnknownMethod"),
        ("/", "UnknownMethod"),
        ("", "UnknownMethod"),
        ("/temporal.server.api.adminservice.v1.AdminService/X", "AdminService"),
        ("/temporal.server.api.adminservice.v1.AdminService/DescribeCluster", "AdminService"),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "ServerReflection"),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "ServerReflection"),
        ("/grpc.health.v1.Health/Check", "HealthCheck"),
        ("/grpc.health.v1.Health/Watch", "UnknownMethod"),
    ] {
        let spec = lookup(path);
        assert_eq!(spec.action(), action, "{path}");
        if action != "HealthCheck" {
            assert_eq!(spec.access, Access::Ungrouped, "{path}");
            assert_eq!(spec.access.group(), None, "{path}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// inspect() on requests serialized by the real generated classes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Vector {
    service: String,
    method: String,
    framing: String,
    hex: String,
    expect: Expect,
}

#[derive(Debug, PartialEq, Eq, Deserialize)]
struct Expect {
    kind: String,
    namespace: Option<String>,
    workflow_id: Option<String>,
    workflow_type: Option<String>,
    task_queue: Option<String>,
    schedule_id: Option<String>,
    signal_name: Option<String>,
    query_type: Option<String>,
    update_name: Option<String>,
    has_task_token: bool,
    namespace_id: Option<String>,
}

impl From<Call> for Expect {
    fn from(call: Call) -> Self {
        Expect {
            kind: call.resource.kind.entity_type().to_owned(),
            namespace: call.resource.namespace,
            workflow_id: call.resource.workflow_id,
            workflow_type: call.resource.workflow_type,
            task_queue: call.resource.task_queue,
            schedule_id: call.resource.schedule_id,
            signal_name: call.signal_name,
            query_type: call.query_type,
            update_name: call.update_name,
            has_task_token: call.has_task_token,
            namespace_id: call.namespace_id,
        }
    }
}

fn from_hex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd-length hex");
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit")).collect()
}

const LIMIT: usize = 4 << 20;

#[test]
fn inspect_reads_what_the_server_would() {
    let json = run_support_script("temporal_vectors.py");
    let vectors: HashMap<String, Vector> =
        serde_json::from_str(&json).expect("temporal_vectors.py prints the documented JSON");
    let covered: HashSet<&str> = vectors.values().map(|vector| vector.method.as_str()).collect();
    for spec in CATALOG {
        assert!(covered.contains(spec.name), "no vector for {}", spec.name);
    }
    assert!(vectors.values().any(|vector| vector.framing == "gzip"), "no compressed vector");

    let mut names: Vec<&String> = vectors.keys().collect();
    names.sort();
    let mut errors = Vec::new();
    for name in names {
        let vector = &vectors[name];
        let spec = lookup(&format!("/{}/{}", vector.service, vector.method));
        assert_eq!(spec.name, vector.method, "{name}: not in the catalog");
        let bytes = from_hex(&vector.hex);
        let message = match vector.framing.as_str() {
            "none" => bytes,
            "gzip" => {
                let framed =
                    inspect::first_message(&bytes, LIMIT).expect("frame within limits").expect("whole frame present");
                assert!(framed.compressed, "{name}: compressed flag");
                assert_eq!(
                    inspect::decompress(&framed, None, LIMIT).err(),
                    Some(inspect::InspectError::CompressedWithoutEncoding),
                    "{name}"
                );
                inspect::decompress(&framed, Some("gzip"), LIMIT).expect("valid gzip").into_owned()
            }
            other => panic!("{name}: unknown framing {other}"),
        };
        match inspect::inspect(spec, &message) {
            Ok(call) => {
                let actual = Expect::from(call);
                if actual != vector.expect {
                    errors.push(format!("{name}:\n  expected {:?}\n  inspected {actual:?}", vector.expect));
                }
            }
            Err(error) => errors.push(format!("{name}: {error}")),
        }
    }
    assert!(errors.is_empty(), "{} vector(s) differ:\n{}", errors.len(), errors.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Stamps: where the verified principal and the initiator header are written
// ---------------------------------------------------------------------------------------------

const HEADER: &str = "message:temporal.api.common.v1.Header";
/// A failure's own `identity` fields say who failed an activity, inside data a worker reports:
/// not who sends the request.
const FAILURE: &str = "temporal.api.failure.v1.Failure";

/// Every field path (numbers, outermost first) a stamp writes to, checking each step against the
/// descriptors: leaves must be `identity` strings (or `Header`s), oneof members exactly the
/// oneof's, repeated steps really repeated.
fn stamped_paths(message: &str, stamp: &Stamp, leaf: (&str, &str), errors: &mut Vec<String>) -> Vec<Vec<u32>> {
    let check_leaf = |path: &[u32], errors: &mut Vec<String>| match DESCRIPTORS.resolve(message, path) {
        Err(error) => errors.push(format!("{message} {path:?}: {error}")),
        Ok(fields) => {
            let last = fields[fields.len() - 1];
            if (last.name.as_str(), last.ty.as_str()) != leaf {
                errors.push(format!(
                    "{message} {path:?} is `{}` ({}), not `{}` ({})",
                    last.name, last.ty, leaf.0, leaf.1
                ));
            }
            if let Some(step) = fields.iter().find(|field| field.oneof.is_some()) {
                errors.push(format!("{message} {path:?} passes through oneof member `{}`: use InOneof", step.name));
            }
        }
    };
    match *stamp {
        Stamp::At(path) => {
            check_leaf(path, errors);
            vec![path.to_vec()]
        }
        Stamp::ReplaceAt(path) => {
            if leaf.1 != HEADER {
                errors.push(format!("{message} {path:?}: ReplaceAt is for headers"));
            }
            check_leaf(path, errors);
            vec![path.to_vec()]
        }
        Stamp::InOneof { oneof, members } => {
            let holder = if oneof.is_empty() {
                message.to_owned()
            } else {
                match DESCRIPTORS.resolve(message, oneof) {
                    Ok(fields) => match fields[fields.len() - 1].message_type() {
                        Some(name) => name.to_owned(),
                        None => {
                            errors.push(format!("{message} {oneof:?} is not a message"));
                            return Vec::new();
                        }
                    },
                    Err(error) => {
                        errors.push(format!("{message} {oneof:?}: {error}"));
                        return Vec::new();
                    }
                }
            };
            let fields = &DESCRIPTORS.message(&holder).fields;
            let first = members.first().and_then(|(n, _)| fields.iter().find(|f| f.number == *n));
            let Some(oneof_name) = first.and_then(|f| f.oneof.clone()) else {
                errors.push(format!("{holder}: the first member of {members:?} is not in a oneof"));
                return Vec::new();
            };
            let mut expected: Vec<u32> =
                fields.iter().filter(|f| f.oneof.as_deref() == Some(&oneof_name)).map(|f| f.number).collect();
            let mut listed: Vec<u32> = members.iter().map(|(n, _)| *n).collect();
            expected.sort();
            listed.sort();
            if expected != listed {
                errors.push(format!("{holder}.{oneof_name}: members are {expected:?}, the stamp lists {listed:?}"));
            }
            let mut out = Vec::new();
            for (member, inner) in members {
                let Some(inner) = inner else { continue };
                let Some(field) = fields.iter().find(|f| f.number == *member) else { continue };
                let Some(member_type) = field.message_type() else {
                    errors.push(format!("{holder}.{} is not a message", field.name));
                    continue;
                };
                for path in stamped_paths(member_type, inner, leaf, errors) {
                    out.push([oneof, &[*member], &path].concat());
                }
            }
            out
        }
        Stamp::All(places) => places.iter().flat_map(|place| stamped_paths(message, place, leaf, errors)).collect(),
        Stamp::InAny { any, type_name, inner } => {
            match DESCRIPTORS.resolve(message, any) {
                Ok(fields) if fields[fields.len() - 1].ty == ANY => {}
                Ok(_) => errors.push(format!("{message} {any:?} is not a google.protobuf.Any")),
                Err(error) => errors.push(format!("{message} {any:?}: {error}")),
            }
            if !DESCRIPTORS.messages.contains_key(type_name) {
                errors.push(format!("{type_name} (packed in {message} {any:?}) is not in the descriptors"));
                return Vec::new();
            }
            stamped_paths(type_name, inner, leaf, errors)
                .into_iter()
                .map(|path| [any, &[ANY_VALUE], &path].concat())
                .collect()
        }
        Stamp::InEach { repeated, each } => {
            let Some(field) = DESCRIPTORS.message(message).fields.iter().find(|f| f.number == repeated) else {
                errors.push(format!("{message} has no field {repeated}"));
                return Vec::new();
            };
            if !field.repeated || field.message_type().is_none() {
                errors.push(format!("{message}.{} is not a repeated message", field.name));
                return Vec::new();
            }
            stamped_paths(field.message_type().unwrap(), each, leaf, errors)
                .into_iter()
                .map(|path| [&[repeated][..], &path].concat())
                .collect()
        }
    }
}

const ANY: &str = "message:google.protobuf.Any";
/// `google.protobuf.Any.value`: the packed message.
const ANY_VALUE: u32 = 2;

/// What a request's `Any` fields may hold that Temporal acts on: (method, path of the `Any`,
/// the message types Temporal unpacks there). Every `Any` a request can carry must be listed,
/// so that a new one is looked into.
const KNOWN_ANY: &[(&str, &[u32], &[&str])] = &[
    // A worker's protocol messages: update acceptances, rejections and responses.
    (
        "RespondWorkflowTaskCompleted",
        &[11, 5],
        &["temporal.api.update.v1.Acceptance", "temporal.api.update.v1.Rejection", "temporal.api.update.v1.Response"],
    ),
    // The same, with a failed workflow task (rejections, mostly).
    (
        "RespondWorkflowTaskFailed",
        &[7, 5],
        &["temporal.api.update.v1.Acceptance", "temporal.api.update.v1.Rejection", "temporal.api.update.v1.Response"],
    ),
];

/// Every path from `message` to a field matching `leaf`, through messages (repeated or not) and
/// the `Any`s of [`KNOWN_ANY`], never through a `Failure` nor twice through one message type. An
/// `Any` not listed there is reported in `unknown_any`.
fn reachable(
    method: &str,
    message: &str,
    leaf: (&str, &str),
    seen: &mut Vec<String>,
    prefix: &mut Vec<u32>,
    found: &mut (Vec<Vec<u32>>, Vec<Vec<u32>>),
) {
    if seen.iter().any(|name| name == message) || seen.len() > 8 {
        return;
    }
    seen.push(message.to_owned());
    for field in &DESCRIPTORS.message(message).fields {
        prefix.push(field.number);
        if (field.name.as_str(), field.ty.as_str()) == leaf && !field.repeated {
            found.0.push(prefix.clone());
        } else if field.ty == ANY {
            match KNOWN_ANY.iter().find(|(m, path, _)| *m == method && *path == prefix.as_slice()) {
                Some((_, _, types)) => {
                    prefix.push(ANY_VALUE);
                    for packed in *types {
                        reachable(method, packed, leaf, seen, prefix, found);
                    }
                    prefix.pop();
                }
                None => found.1.push(prefix.clone()),
            }
        } else if let Some(inner) = field.message_type()
            && inner != FAILURE
            && DESCRIPTORS.messages.contains_key(inner)
        {
            reachable(method, inner, leaf, seen, prefix, found);
        }
        prefix.pop();
    }
    seen.pop();
}

/// Places no stamp writes to, and why: an acceptance's or a rejection's copy of the update
/// request (`Acceptance.accepted_request = 3`, `Rejection.rejected_request = 3`: its
/// `meta.identity` and `input.header`). Temporal records its own copy of the request, never the
/// worker's, and records no rejection at all.
const UNSTAMPED: &[(&str, &[u32])] = &[
    ("RespondWorkflowTaskCompleted", &[11, 5, 2, 3, 1, 2]),
    ("RespondWorkflowTaskCompleted", &[11, 5, 2, 3, 2, 1]),
    ("RespondWorkflowTaskFailed", &[7, 5, 2, 3, 1, 2]),
    ("RespondWorkflowTaskFailed", &[7, 5, 2, 3, 2, 1]),
];

/// Every `identity` a request carries is replaced with the verified principal, and every Temporal
/// header of a start or signal (and every one a forged entry could hide in) gets flowgate's entry:
/// a field the catalog misses is a place where a client still speaks for itself.
#[test]
fn every_identity_and_header_is_stamped() {
    let mut errors = Vec::new();
    for spec in CATALOG {
        let input = DESCRIPTORS.input_name(spec);
        for (what, stamp, leaf) in
            [("identity", spec.identity, ("identity", "string")), ("header", spec.header, ("header", HEADER))]
        {
            let mut found = (Vec::new(), Vec::new());
            reachable(spec.name, input, leaf, &mut Vec::new(), &mut Vec::new(), &mut found);
            let (mut expected, unknown_any) = found;
            for path in unknown_any {
                errors.push(format!("{}: a google.protobuf.Any at {path:?} is not in KNOWN_ANY", spec.name));
            }
            let mut stamped = match stamp {
                Some(stamp) => stamped_paths(input, &stamp, leaf, &mut errors),
                None => Vec::new(),
            };
            expected
                .retain(|path| !UNSTAMPED.iter().any(|(method, unstamped)| *method == spec.name && path == unstamped));
            expected.dedup();
            expected.sort();
            stamped.sort();
            for missing in expected.iter().filter(|path| !stamped.contains(path)) {
                errors.push(format!("{}: {what} at {missing:?} is not stamped", spec.name));
            }
            for extra in stamped.iter().filter(|path| !expected.contains(path)) {
                errors.push(format!("{}: {what} stamp at {extra:?} is not a reachable {what}", spec.name));
            }
        }
    }
    assert!(errors.is_empty(), "{} stamp problem(s):\n{}", errors.len(), errors.join("\n"));
}
