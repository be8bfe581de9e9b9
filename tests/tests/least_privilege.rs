// Test-only code: helpers outside #[test] functions may unwrap and panic too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Least privilege, read from `template.yaml`: no function holds a managed
//! policy or a secret in its environment; each function's own role grants
//! exactly the AWS operations its tenant-less work calls, on named
//! resources; the tenant-access role grants exactly the operations the
//! table and blob adapters call, and only inside the tagged tenant's
//! partition and prefix, which a neighbour whose id begins the same
//! (`acme`, `acme2`) cannot reach.

use serde_yaml_ng::Value;
use std::collections::BTreeSet;

fn template() -> Value {
    serde_yaml_ng::from_str(include_str!("../../template.yaml")).unwrap()
}

fn tag_of(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Tagged(t) => Some((t.tag.to_string().trim_start_matches('!').to_string(), &t.value)),
        _ => None,
    }
}

/// A resource or condition value as IAM would see it in stack `keel-dev`.
fn render(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) => items.iter().flat_map(render).collect(),
        _ => match tag_of(v) {
            Some((tag, Value::String(s))) if tag == "GetAtt" => vec![format!("{}", s.trim_end_matches(".Arn"))],
            Some((tag, Value::String(s))) if tag == "Ref" => vec![s.clone()],
            Some((tag, Value::String(s))) if tag == "Sub" => vec![s
                .replace("${AWS::Partition}", "aws")
                .replace("${AWS::AccountId}", "123456789012")
                .replace("${AWS::Region}", "us-east-1")
                .replace("${AWS::StackName}", "keel-dev")
                .replace("${Bucket.Arn}", "arn:aws:s3:::keel-bucket")
                .replace("${!", "${")],
            _ => panic!("unexpected value in a policy: {v:?}"),
        },
    }
}

/// The statements of a function's `Policies` (an `!If` counts by its granting branch).
fn function_statements(function: &Value) -> Vec<Value> {
    let policies = function["Properties"]["Policies"].as_sequence().cloned().unwrap_or_default();
    let mut statements = Vec::new();
    for policy in policies {
        let policy = match tag_of(&policy) {
            Some((tag, args)) if tag == "If" => args[1].clone(),
            _ => policy,
        };
        let Some(list) = policy.get("Statement").and_then(Value::as_sequence) else {
            panic!("a managed or templated policy (write explicit statements): {policy:?}");
        };
        statements.extend(list.iter().cloned());
    }
    statements
}

/// `(action, resource)` pairs a statement allows; a DynamoDB statement's
/// resource names the partition its `LeadingKeys` condition admits.
fn grants(statement: &Value) -> BTreeSet<(String, String)> {
    assert_eq!(statement["Effect"].as_str(), Some("Allow"));
    let actions = render(&statement["Action"]);
    let mut resources: Vec<String> = render(&statement["Resource"]).into_iter().map(|r| short_name(&r)).collect();
    if let Some(keys) = statement.get("Condition").and_then(|c| c.get("ForAllValues:StringEquals")) {
        let partitions = render(&keys["dynamodb:LeadingKeys"]).join(",");
        resources = resources.into_iter().map(|r| format!("{r}[{partitions}]")).collect();
    }
    actions.iter().flat_map(|a| resources.iter().map(move |r| (a.clone(), r.clone()))).collect()
}

fn short_name(resource: &str) -> String {
    match resource {
        r if r.ends_with(":role/keel-dev-tenant-access") => "TenantAccessRole".into(),
        r if r.contains(":stateMachine:keel-dev-action-saga") => "ActionSaga".into(),
        r if r.contains(":execution:keel-dev-action-saga:") => "ActionSaga executions".into(),
        r if r.contains(":bedrock:") => "bedrock models".into(),
        r if r.contains(":sagemaker:") => "sagemaker endpoints".into(),
        r => r.into(),
    }
}

/// The SDK operations Keel's AWS adapters call, by the IAM action that authorizes each.
const SDK_OPERATIONS: &[(&str, &str)] = &[
    (".get_item()", "dynamodb:GetItem"),
    (".update_item()", "dynamodb:UpdateItem"),
    // IAM authorizes each item of a transaction as its own UpdateItem.
    (".transact_write_items()", "dynamodb:UpdateItem"),
    (".delete_item()", "dynamodb:DeleteItem"),
    (".query()", "dynamodb:Query"),
    (".put_object()", "s3:PutObject"),
    (".get_object()", "s3:GetObject"),
    (".delete_object()", "s3:DeleteObject"),
    (".set_version_id(", "s3:DeleteObjectVersion"),
    (".list_objects_v2()", "s3:ListBucket"),
    (".list_object_versions()", "s3:ListBucketVersions"),
    (".send_message()", "sqs:SendMessage"),
    (".start_execution()", "states:StartExecution"),
    (".describe_execution()", "states:DescribeExecution"),
    (".send_task_success()", "states:SendTaskSuccess"),
    (".send_task_failure()", "states:SendTaskFailure"),
    (".converse()", "bedrock:InvokeModel"),
    (".converse_stream()", "bedrock:InvokeModelWithResponseStream"),
    (".invoke_endpoint()", "sagemaker:InvokeEndpoint"),
    (".invoke_endpoint_with_response_stream()", "sagemaker:InvokeEndpointWithResponseStream"),
    (".get_secret_value()", "secretsmanager:GetSecretValue"),
    (".publish()", "sns:Publish"),
    ("AssumeRoleProvider::builder(", "sts:AssumeRole"),
    (".tags([(TENANT_TAG", "sts:TagSession"),
];

fn actions_called_by(source: &str) -> BTreeSet<String> {
    SDK_OPERATIONS.iter().filter(|(call, _)| source.contains(call)).map(|(_, action)| action.to_string()).collect()
}

/// What each function's own role must allow, and why: everything else a
/// function does is a tenant's work, done in that tenant's session.
const FUNCTION_ROLES: &[(&str, &[(&str, &str)])] = &[
    ("AuthFunction", &[
        ("sts:AssumeRole", "TenantAccessRole"),
        ("sts:TagSession", "TenantAccessRole"),
        // Identity providers' issuers are claimed platform-wide.
        ("dynamodb:GetItem", "Table[PLATFORM]"),
        ("dynamodb:UpdateItem", "Table[PLATFORM]"),
        ("dynamodb:DeleteItem", "Table[PLATFORM]"),
        ("sqs:SendMessage", "AuditQueue"),
        // Turning redact_pii on hands the re-redaction to the retrieval function.
        ("sqs:SendMessage", "IngestQueue"),
        ("secretsmanager:GetSecretValue", "AdminKeySecret"),
        ("secretsmanager:GetSecretValue", "JwtSecretArn"),
    ]),
    ("RetrievalFunction", &[
        ("sts:AssumeRole", "TenantAccessRole"),
        ("sts:TagSession", "TenantAccessRole"),
        ("sqs:SendMessage", "IngestDeadLetterQueue"),
        // Deletion receipts: a deleted tenant's messages are dropped.
        ("dynamodb:GetItem", "Table[PLATFORM]"),
    ]),
    ("RoutingFunction", &[
        ("sts:AssumeRole", "TenantAccessRole"),
        ("sts:TagSession", "TenantAccessRole"),
        // Its function URL authenticates callers itself, tokens of tenants' providers included.
        ("dynamodb:GetItem", "Table[PLATFORM]"),
        ("sqs:SendMessage", "AuditQueue"),
        ("bedrock:InvokeModel", "bedrock models"),
        ("bedrock:InvokeModelWithResponseStream", "bedrock models"),
        ("sagemaker:InvokeEndpoint", "sagemaker endpoints"),
        ("sagemaker:InvokeEndpointWithResponseStream", "sagemaker endpoints"),
        ("secretsmanager:GetSecretValue", "JwtSecretArn"),
    ]),
    ("ToolsFunction", &[
        ("sts:AssumeRole", "TenantAccessRole"),
        ("sts:TagSession", "TenantAccessRole"),
        ("sqs:SendMessage", "ActionsDeadLetterQueue"),
        ("sqs:SendMessage", "AuditQueue"),
        ("states:StartExecution", "ActionSaga"),
        ("states:DescribeExecution", "ActionSaga executions"),
        ("states:SendTaskSuccess", "ActionSaga"),
        ("states:SendTaskFailure", "ActionSaga"),
        ("dynamodb:GetItem", "Table[PLATFORM]"),
    ]),
    ("AuditFunction", &[
        ("sts:AssumeRole", "TenantAccessRole"),
        ("sts:TagSession", "TenantAccessRole"),
        ("dynamodb:GetItem", "Table[PLATFORM]"),
        // Budget alerts to the operators' topic.
        ("sns:Publish", "AlarmTopic"),
    ]),
];

fn adapters_source() -> String {
    [
        include_str!("../../shared/aws/src/dynamodb.rs"),
        include_str!("../../shared/aws/src/s3.rs"),
        include_str!("../../shared/aws/src/sqs.rs"),
        include_str!("../../shared/aws/src/sfn.rs"),
        include_str!("../../shared/aws/src/bedrock.rs"),
        include_str!("../../shared/aws/src/sagemaker.rs"),
        include_str!("../../shared/aws/src/secrets.rs"),
        include_str!("../../shared/aws/src/sessions.rs"),
        include_str!("../../shared/aws/src/sns.rs"),
    ]
    .concat()
}

#[test]
fn each_function_role_allows_exactly_its_tenant_less_work() {
    let template = template();
    let called = actions_called_by(&adapters_source());
    for (function, expected) in FUNCTION_ROLES {
        let resource = &template["Resources"][*function];
        assert_eq!(resource["Type"].as_str(), Some("AWS::Serverless::Function"), "{function}");
        let granted: BTreeSet<(String, String)> = function_statements(resource).iter().flat_map(grants).collect();
        let expected: BTreeSet<(String, String)> = expected.iter().map(|(a, r)| (a.to_string(), r.to_string())).collect();
        assert_eq!(granted, expected, "{function}'s role");
        for (action, _) in &expected {
            assert!(called.contains(action), "{function} is allowed {action}, which no adapter calls");
        }
    }
    let functions = template["Resources"].as_mapping().unwrap().values().filter(|r| r["Type"].as_str() == Some("AWS::Serverless::Function")).count();
    assert_eq!(functions, FUNCTION_ROLES.len(), "every function is in the table");
}

#[test]
fn no_function_environment_holds_a_secret() {
    let text = include_str!("../../template.yaml");
    assert!(!text.contains("{{resolve:secretsmanager"), "secrets are read at init from Secrets Manager, not resolved into the environment");
    assert!(!text.contains("KEEL_ADMIN_KEY:") && !text.contains("KEEL_JWT_SECRET:"));
    let template = template();
    let holders: Vec<&str> = FUNCTION_ROLES
        .iter()
        .filter(|(f, _)| template["Resources"][*f]["Properties"]["Environment"]["Variables"].get("KEEL_ADMIN_KEY_SECRET_ARN").is_some())
        .map(|(f, _)| *f)
        .collect();
    assert_eq!(holders, ["AuthFunction"], "only the auth function is told where the platform admin key is");
}

fn tenant_role_statements() -> Vec<Value> {
    let template = template();
    let role = &template["Resources"]["TenantAccessRole"];
    assert_eq!(role["Type"].as_str(), Some("AWS::IAM::Role"));
    let policies = role["Properties"]["Policies"].as_sequence().unwrap();
    policies.iter().flat_map(|p| p["PolicyDocument"]["Statement"].as_sequence().unwrap().clone()).collect()
}

#[test]
fn the_tenant_role_allows_exactly_what_the_table_and_blob_adapters_call() {
    let statements = tenant_role_statements();
    let granted: BTreeSet<String> = statements.iter().flat_map(|s| render(&s["Action"])).collect();
    let called = actions_called_by(&[include_str!("../../shared/aws/src/dynamodb.rs"), include_str!("../../shared/aws/src/s3.rs")].concat());
    assert_eq!(granted, called);
    for s in &statements {
        assert_eq!(s["Condition"]["Null"]["aws:PrincipalTag/tenant"].as_str(), Some("false"), "an untagged session gets nothing: {s:?}");
    }
}

/// `*` and `?` as IAM's string and ARN matching read them.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|i| go(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && go(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(&p, &t)
}

/// A request to the tenant-access role's policy, evaluated as IAM would for
/// the conditions it uses (Null, StringEquals on LeadingKeys, StringLike).
struct Request<'a> {
    action: &'a str,
    resource: &'a str,
    leading_key: Option<&'a str>,
    prefix: Option<&'a str>,
}

fn allowed(statements: &[Value], session_tag: Option<&str>, request: &Request) -> bool {
    let fill = |s: &str| session_tag.map(|t| s.replace("${aws:PrincipalTag/tenant}", t));
    statements.iter().any(|s| {
        let resource_ok = render(&s["Resource"]).iter().any(|r| {
            let r = if r == "Table" { "arn:aws:dynamodb:us-east-1:123456789012:table/keel".to_string() } else if r == "Bucket" { "arn:aws:s3:::keel-bucket".to_string() } else { r.clone() };
            fill(&r).is_some_and(|r| glob(&r, request.resource))
        });
        let action_ok = render(&s["Action"]).iter().any(|a| a == request.action);
        let condition = &s["Condition"];
        let tag_ok = session_tag.is_some();
        let keys_ok = match condition.get("ForAllValues:StringEquals") {
            Some(c) => {
                let admitted: Vec<String> = render(&c["dynamodb:LeadingKeys"]).iter().filter_map(|k| fill(k)).collect();
                request.leading_key.is_some_and(|k| admitted.iter().any(|a| a == k))
            }
            None => true,
        };
        let prefix_ok = match condition.get("StringLike").and_then(|c| c.get("s3:prefix")) {
            Some(p) => request.prefix.is_some_and(|prefix| render(p).iter().filter_map(|k| fill(k)).any(|k| glob(&k, prefix))),
            None => true,
        };
        resource_ok && action_ok && tag_ok && keys_ok && prefix_ok
    })
}

#[test]
fn a_tenant_session_reaches_its_own_partition_and_prefix_and_not_a_neighbours() {
    let statements = tenant_role_statements();
    let table = "arn:aws:dynamodb:us-east-1:123456789012:table/keel";
    let item = |pk| Request { action: "dynamodb:GetItem", resource: table, leading_key: Some(pk), prefix: None };
    fn object(key: &str) -> Request<'_> {
        Request { action: "s3:GetObject", resource: key, leading_key: None, prefix: None }
    }
    let listing = |prefix| Request { action: "s3:ListBucket", resource: "arn:aws:s3:::keel-bucket", leading_key: None, prefix };

    assert!(allowed(&statements, Some("acme"), &item("T#acme")));
    for pk in ["T#acme2", "T#acm", "T#acme#x", "PLATFORM", "T#"] {
        assert!(!allowed(&statements, Some("acme"), &item(pk)), "acme's session reached {pk}");
    }
    assert!(allowed(&statements, Some("acme2"), &item("T#acme2")));
    assert!(!allowed(&statements, Some("acme2"), &item("T#acme")));

    assert!(allowed(&statements, Some("acme"), &object("arn:aws:s3:::keel-bucket/tenants/acme/documents/a.json")));
    for key in ["tenants/acme2/documents/a.json", "tenants/acmex", "tenants/other/acme/a", "acme/a"] {
        let arn = format!("arn:aws:s3:::keel-bucket/{key}");
        assert!(!allowed(&statements, Some("acme"), &object(&arn)), "acme's session reached {key}");
    }
    assert!(allowed(&statements, Some("acme"), &listing(Some("tenants/acme/"))));
    for prefix in [Some("tenants/acme2/"), Some("tenants/acme"), Some("tenants/"), None] {
        assert!(!allowed(&statements, Some("acme"), &listing(prefix)), "acme's session listed {prefix:?}");
    }
    // An untagged session of the role gets nothing at all.
    assert!(!allowed(&statements, None, &item("T#acme")));
    assert!(!allowed(&statements, None, &object("arn:aws:s3:::keel-bucket/tenants/acme/documents/a.json")));
}

#[test]
fn only_the_functions_may_assume_the_tenant_role_and_only_with_a_tenant_tag() {
    let template = template();
    let trust = &template["Resources"]["TenantAccessRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0];
    let principals: BTreeSet<String> = render(&trust["Principal"]["AWS"]).into_iter().collect();
    let roles: BTreeSet<String> = FUNCTION_ROLES.iter().map(|(f, _)| format!("{f}Role")).collect();
    assert_eq!(principals, roles);
    assert_eq!(trust["Condition"]["StringLike"]["aws:RequestTag/tenant"].as_str(), Some("?*"));
}

#[test]
fn old_object_versions_expire() {
    let template = template();
    let rules = template["Resources"]["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"].as_sequence().unwrap();
    let rule = rules.iter().find(|r| r.get("NoncurrentVersionExpiration").is_some()).expect("a rule expiring noncurrent versions");
    assert_eq!(rule["Status"].as_str(), Some("Enabled"));
    assert!(rule.get("Prefix").is_none() && rule.get("Filter").is_none(), "every object's old versions, not some");
}

#[test]
fn the_api_throttles_and_logs_each_request_as_json_with_its_id_and_tenant() {
    let template = template();
    let api = &template["Resources"]["Api"]["Properties"];
    let throttle = &api["DefaultRouteSettings"];
    assert!(throttle.get("ThrottlingRateLimit").is_some() && throttle.get("ThrottlingBurstLimit").is_some());
    let format: serde_json::Value = serde_json::from_str(api["AccessLogSettings"]["Format"].as_str().unwrap()).expect("the access log format is JSON");
    assert_eq!(format["requestId"], "$context.requestId");
    assert_eq!(format["tenant"], "$context.authorizer.tenant", "the authorizer's context names the tenant");
    assert_eq!(render(&api["AccessLogSettings"]["DestinationArn"]), ["ApiAccessLogs"]);
}

/// S3 notices are trusted only from the inbox queue: the bucket notifies that
/// queue alone, the queue's policy lets the bucket send and denies everyone
/// else (IAM grants in the account included), no other queue lets S3 in, and
/// the retrieval function tells the inbox's records by the queue's ARN.
#[test]
fn only_the_bucket_sends_to_the_inbox_queue_and_s3_notifies_no_other() {
    let template = template();
    let resources = &template["Resources"];
    let notices = resources["Bucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"].as_sequence().unwrap();
    assert!(notices.iter().all(|n| render(&n["Queue"]) == ["InboxQueue"]), "{notices:?}");
    let bucket = "arn:aws:s3:::keel-${Stage}-123456789012-us-east-1";
    let mut s3_allowed = Vec::new();
    for (name, resource) in resources.as_mapping().unwrap() {
        if resource["Type"].as_str() != Some("AWS::SQS::QueuePolicy") {
            continue;
        }
        for statement in resource["Properties"]["PolicyDocument"]["Statement"].as_sequence().unwrap() {
            if statement["Effect"].as_str() == Some("Allow") && statement["Principal"]["Service"].as_str() == Some("s3.amazonaws.com") {
                s3_allowed.push(render(&statement["Resource"]));
                assert_eq!(render(&statement["Condition"]["ArnEquals"]["aws:SourceArn"]), [bucket], "{name:?}");
            }
        }
    }
    assert_eq!(s3_allowed, [vec!["InboxQueue".to_string()]]);
    let statements = resources["InboxQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"].as_sequence().unwrap();
    let deny = statements.iter().find(|s| s["Effect"].as_str() == Some("Deny")).expect("a deny for every other sender");
    assert_eq!((deny["Principal"].as_str(), deny["Action"].as_str()), (Some("*"), Some("sqs:SendMessage")));
    assert_eq!(render(&deny["Condition"]["ArnNotEquals"]["aws:SourceArn"]), [bucket]);
    let retrieval = &resources["RetrievalFunction"]["Properties"];
    assert_eq!(render(&retrieval["Environment"]["Variables"]["KEEL_INBOX_QUEUE_ARN"]), ["InboxQueue"]);
    assert_eq!(render(&retrieval["Events"]["InboxQueueBatch"]["Properties"]["Queue"]), ["InboxQueue"]);
}
