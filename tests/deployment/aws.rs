//! Credentials and region through aws-config, as a deployment sees them: `mqtt-dynamo tables
//! create` runs as a child process with a cleared environment (HOME and the AWS files in a
//! temporary directory, no inherited `AWS_*`), against dynoxide behind a recording proxy, and
//! each case asserts the key id and region of every request's SigV4 scope, its
//! `x-amz-security-token`, and that neither the secret key nor the token shows in the output.
//!
//! IMDS is disabled (`AWS_EC2_METADATA_DISABLED=true`) except where a case points it at its
//! stand-in, so no case sends a packet off the loopback interface.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use mqtt_dynamo::test_util::Backend;

use crate::stand_in::{self, Issued, StandIn};

/// A command's time limit: a credential or region lookup that hangs fails the case instead.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// A temporary HOME with the AWS files in it, dynoxide, and the recording proxy in front of it.
struct Deployment {
    home: tempfile::TempDir,
    proxy: StandIn,
    _dynamo: Backend,
}

impl Deployment {
    async fn new() -> Deployment {
        let dynamo = Backend::dynoxide().await;
        let proxy = StandIn::proxy(dynamo.endpoint()).await;
        Deployment {
            home: tempfile::tempdir().unwrap(),
            proxy,
            _dynamo: dynamo,
        }
    }

    /// The DynamoDB endpoint for the command: the recording proxy.
    fn dynamo_url(&self) -> String {
        self.proxy.url()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }

    /// Writes `text` to `rel` under HOME (directories created): its path.
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `mqtt-dynamo args` with only HOME, PATH, the AWS file locations, IMDS disabled and
    /// `env` (which may override those) in its environment, within [`COMMAND_LIMIT`].
    async fn run(&self, args: &[&str], env: &[(&str, String)]) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtt-dynamo"));
        cmd.args(args)
            .env_clear()
            .env("HOME", self.home.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AWS_CONFIG_FILE", self.path(".aws/config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.path(".aws/credentials"))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // aws_config at debug: the credential providers' own lines are checked for secrets.
            .env("RUST_LOG", "info,aws_config=debug")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        tokio::time::timeout(COMMAND_LIMIT, cmd.output())
            .await
            .expect("the command ends within its limit")
            .expect("the command runs")
    }

    /// `run`, which must succeed.
    async fn run_ok(&self, args: &[&str], env: &[(&str, String)]) -> Output {
        let out = self.run(args, env).await;
        assert!(
            out.status.success(),
            "{args:?} failed: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Asserts that DynamoDB was called, and that every call was signed for `dynamodb` in
    /// `region` with `key_id`, carrying `token` as `x-amz-security-token` (or none).
    fn assert_signed(&self, key_id: &str, region: &str, token: Option<&str>) {
        let seen = self.proxy.seen();
        assert!(!seen.is_empty(), "no DynamoDB request reached the proxy");
        for req in &seen {
            let scope = req.credential_scope();
            assert_eq!(
                scope,
                Some((
                    key_id.to_string(),
                    region.to_string(),
                    "dynamodb".to_string()
                )),
                "credential scope of {} {}",
                req.method,
                req.header("x-amz-target").unwrap_or("")
            );
            assert_eq!(req.header("x-amz-security-token"), token, "session token");
        }
    }
}

/// `tables create`: a few CreateTable and DescribeTable calls, every one signed.
const CREATE: [&str; 2] = ["tables", "create"];

/// Asserts that none of `secrets` appears in the command's stdout or stderr.
fn assert_not_logged(out: &Output, secrets: &[&str]) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for secret in secrets {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret:?} was printed:\nstdout: {stdout}\nstderr: {stderr}"
        );
    }
}

/// The command's log line about its DynamoDB client (region, its source, the credential source).
fn client_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.contains("DynamoDB client: region"))
        .unwrap_or_default()
        .to_string()
}

fn s(v: impl Into<String>) -> String {
    v.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_keys_with_session_token() {
    let d = Deployment::new().await;
    let out = d
        .run_ok(
            &CREATE,
            &[
                ("AWS_ENDPOINT_URL", d.dynamo_url()),
                ("AWS_REGION", s("eu-west-1")),
                ("AWS_ACCESS_KEY_ID", s("ASIAENVKEY")),
                ("AWS_SECRET_ACCESS_KEY", s("env-secret-key-4711")),
                ("AWS_SESSION_TOKEN", s("env-session-token-4711")),
            ],
        )
        .await;
    d.assert_signed("ASIAENVKEY", "eu-west-1", Some("env-session-token-4711"));
    assert_not_logged(&out, &["env-secret-key-4711", "env-session-token-4711"]);
    let line = client_line(&out);
    assert!(
        line.contains("eu-west-1 (configuration)")
            && line.contains("the AWS default credential chain"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_keys_win_over_the_environment() {
    let d = Deployment::new().await;
    let with_token = d.write(
        "with-token.toml",
        &format!(
            "[dynamodb]\nendpoint_url = \"{}\"\nregion = \"ca-central-1\"\n\
             access_key_id = \"ASIAFILEKEY\"\nsecret_access_key = \"file-secret-key-0815\"\n\
             session_token = \"file-session-token-0815\"\n",
            d.dynamo_url()
        ),
    );
    let env_keys = [
        ("AWS_ACCESS_KEY_ID", s("AKIAENVKEY")),
        ("AWS_SECRET_ACCESS_KEY", s("env-secret-key-4711")),
        ("AWS_SESSION_TOKEN", s("env-session-token-4711")),
    ];
    let out = d
        .run_ok(
            &["--config", with_token.to_str().unwrap(), "tables", "create"],
            &env_keys,
        )
        .await;
    d.assert_signed(
        "ASIAFILEKEY",
        "ca-central-1",
        Some("file-session-token-0815"),
    );
    assert_not_logged(
        &out,
        &[
            "file-secret-key-0815",
            "file-session-token-0815",
            "env-secret-key-4711",
        ],
    );
    assert!(
        client_line(&out).contains("static keys from [dynamodb]"),
        "{}",
        client_line(&out)
    );

    // Keys without a token in the file: none is sent, not the environment's.
    let d = Deployment::new().await;
    let without_token = d.write(
        "without-token.toml",
        &format!(
            "[dynamodb]\nendpoint_url = \"{}\"\nregion = \"ca-central-1\"\n\
             access_key_id = \"AKIAFILEKEY\"\nsecret_access_key = \"file-secret-key-0815\"\n",
            d.dynamo_url()
        ),
    );
    d.run_ok(
        &[
            "--config",
            without_token.to_str().unwrap(),
            "tables",
            "create",
        ],
        &env_keys,
    )
    .await;
    d.assert_signed("AKIAFILEKEY", "ca-central-1", None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_with_credential_process_and_its_region() {
    let d = Deployment::new().await;
    // The credential_process output format, version 1, with a session token.
    let script = d.write(
        "bin/creds.sh",
        "#!/bin/sh\ncat <<'EOF'\n{\"Version\": 1, \"AccessKeyId\": \"ASIAPROCESSKEY\", \
         \"SecretAccessKey\": \"process-secret-key-1234\", \
         \"SessionToken\": \"process-session-token-1234\", \
         \"Expiration\": \"2099-01-01T00:00:00Z\"}\nEOF\n",
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    d.write(
        ".aws/config",
        &format!(
            "[default]\nregion = us-east-1\n\n[profile deploy]\nregion = ap-southeast-2\n\
             credential_process = {}\n",
            script.display()
        ),
    );
    let out = d
        .run_ok(
            &CREATE,
            &[
                ("AWS_ENDPOINT_URL_DYNAMODB", d.dynamo_url()),
                ("AWS_PROFILE", s("deploy")),
            ],
        )
        .await;
    d.assert_signed(
        "ASIAPROCESSKEY",
        "ap-southeast-2",
        Some("process-session-token-1234"),
    );
    assert_not_logged(
        &out,
        &["process-secret-key-1234", "process-session-token-1234"],
    );
    assert!(
        client_line(&out).contains("ap-southeast-2 (profile)"),
        "{}",
        client_line(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_container_credentials() {
    let d = Deployment::new().await;
    let ecs = StandIn::start(stand_in::ecs(
        "/v2/credentials/task-1",
        Some("ecs-auth-token-5678"),
        Issued {
            key_id: "ASIAECSKEY",
            secret: "ecs-secret-key-5678",
            token: "ecs-session-token-5678",
        },
    ))
    .await;
    let out = d
        .run_ok(
            &CREATE,
            &[
                ("AWS_ENDPOINT_URL_DYNAMODB", d.dynamo_url()),
                ("AWS_REGION", s("sa-east-1")),
                (
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    format!("{}/v2/credentials/task-1", ecs.url()),
                ),
                (
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                    s("ecs-auth-token-5678"),
                ),
            ],
        )
        .await;
    d.assert_signed("ASIAECSKEY", "sa-east-1", Some("ecs-session-token-5678"));
    assert_not_logged(
        &out,
        &[
            "ecs-secret-key-5678",
            "ecs-session-token-5678",
            "ecs-auth-token-5678",
        ],
    );
    assert!(
        ecs.seen()
            .iter()
            .all(|r| r.header("authorization") == Some("ecs-auth-token-5678"))
    );
}

/// The IMDS stand-in's credentials.
const IMDS_CREDS: Issued = Issued {
    key_id: "ASIAIMDSKEY",
    secret: "imds-secret-key-9012",
    token: "imds-session-token-9012",
};

/// A configuration for DynamoDB itself (not an endpoint: the whole region chain applies), with
/// the default profile's `endpoint_url` sending the SDK to the proxy instead.
fn aws_backend(d: &Deployment) -> PathBuf {
    d.write(
        ".aws/config",
        &format!("[default]\nendpoint_url = {}\n", d.dynamo_url()),
    );
    d.write("aws.toml", "[dynamodb]\nembedded = false\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_credentials_and_region_on_aws() {
    let d = Deployment::new().await;
    let imds = StandIn::start(stand_in::imds("instance-role", "eu-north-1", IMDS_CREDS)).await;
    let conf = aws_backend(&d);
    let out = d
        .run_ok(
            &["--config", conf.to_str().unwrap(), "tables", "create"],
            &[
                ("AWS_EC2_METADATA_DISABLED", s("false")),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url()),
            ],
        )
        .await;
    d.assert_signed("ASIAIMDSKEY", "eu-north-1", Some("imds-session-token-9012"));
    assert_not_logged(
        &out,
        &[IMDS_CREDS.secret, IMDS_CREDS.token, stand_in::IMDS_TOKEN],
    );
    assert!(
        client_line(&out).contains("eu-north-1 (IMDS)"),
        "{}",
        client_line(&out)
    );
    let seen = imds.seen();
    assert_eq!(
        seen.first().map(|r| r.uri.as_str()),
        Some("/latest/api/token")
    );
    let paths: Vec<&str> = seen.iter().map(|r| r.uri.as_str()).collect();
    assert!(
        paths.contains(&"/latest/meta-data/placement/region"),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/latest/meta-data/iam/security-credentials/instance-role"),
        "{paths:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_disabled_is_never_asked() {
    let d = Deployment::new().await;
    let imds = StandIn::start(stand_in::imds("instance-role", "eu-north-1", IMDS_CREDS)).await;
    let conf = aws_backend(&d);
    let env_keys = |imds_disabled: &str| {
        vec![
            ("AWS_EC2_METADATA_DISABLED", s(imds_disabled)),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url()),
            ("AWS_ACCESS_KEY_ID", s("AKIAENVKEY")),
            ("AWS_SECRET_ACCESS_KEY", s("env-secret-key-4711")),
        ]
    };
    // On AWS with IMDS disabled: no region anywhere, so the default.
    d.run_ok(
        &["--config", conf.to_str().unwrap(), "tables", "create"],
        &env_keys("true"),
    )
    .await;
    d.assert_signed("AKIAENVKEY", "us-west-2", None);
    assert!(imds.seen().is_empty(), "{:?}", imds.seen());

    // An endpoint's region chain stops before IMDS (by design), even with IMDS enabled …
    let d = Deployment::new().await;
    let mut env = env_keys("false");
    env.push(("AWS_ENDPOINT_URL_DYNAMODB", d.dynamo_url()));
    let out = d.run_ok(&CREATE, &env).await;
    d.assert_signed("AKIAENVKEY", "us-west-2", None);
    assert!(
        client_line(&out).contains("us-west-2 (default)"),
        "{}",
        client_line(&out)
    );
    // … and the embedded backend looks nothing up at all.
    let out = d.run_ok(&CREATE, &env_keys("false")).await;
    let line = client_line(&out);
    assert!(
        line.contains("us-west-2 (default)") && line.contains("fixed local keys"),
        "{line}"
    );
    assert!(imds.seen().is_empty(), "{:?}", imds.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_through_sts() {
    let d = Deployment::new().await;
    let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtcXR0LWR5bmFtbyJ9.c2lnbmF0dXJl";
    let role = "arn:aws:iam::123456789012:role/irsa";
    let sts = StandIn::start(stand_in::sts(
        role,
        jwt,
        Issued {
            key_id: "ASIASTSKEY",
            secret: "sts-secret-key-3456",
            token: "sts-session-token-3456",
        },
    ))
    .await;
    let token_file = d.write("var/run/secrets/eks/token", jwt);
    let out = d
        .run_ok(
            &CREATE,
            &[
                // Not AWS_ENDPOINT_URL: that one applies to every service, STS included.
                ("AWS_ENDPOINT_URL_DYNAMODB", d.dynamo_url()),
                ("AWS_ENDPOINT_URL_STS", sts.url()),
                ("AWS_REGION", s("us-east-2")),
                ("AWS_ROLE_ARN", s(role)),
                ("AWS_ROLE_SESSION_NAME", s("mqtt-dynamo")),
                (
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    s(token_file.to_str().unwrap()),
                ),
            ],
        )
        .await;
    d.assert_signed("ASIASTSKEY", "us-east-2", Some("sts-session-token-3456"));
    assert_not_logged(
        &out,
        &["sts-secret-key-3456", "sts-session-token-3456", jwt],
    );
    assert_eq!(sts.seen().len(), 1, "one AssumeRoleWithWebIdentity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_profile_with_cached_token() {
    let d = Deployment::new().await;
    let access_token = "sso-access-token-7890";
    let sso = StandIn::start(stand_in::sso(
        access_token,
        Issued {
            key_id: "ASIASSOKEY",
            secret: "sso-secret-key-7890",
            token: "sso-session-token-7890",
        },
    ))
    .await;
    d.write(
        ".aws/config",
        "[profile sso]\nsso_session = mqtt\nsso_account_id = 123456789012\n\
         sso_role_name = Writer\nregion = ap-northeast-1\n\n\
         [sso-session mqtt]\nsso_region = eu-west-3\n\
         sso_start_url = https://example.awsapps.com/start\n\
         sso_registration_scopes = sso:account:access\n",
    );
    // What `aws sso login` leaves: ~/.aws/sso/cache/<sha1 of the session name>.json
    // (sha1("mqtt") = 6c6756c8…), valid well past the SDK's 5-minute refresh margin.
    d.write(
        ".aws/sso/cache/6c6756c82eca0bdd4c1340fa24d4f6081e906aeb.json",
        &format!(
            "{{\"accessToken\": \"{access_token}\", \"expiresAt\": \"2099-01-01T00:00:00Z\", \
             \"region\": \"eu-west-3\", \"startUrl\": \"https://example.awsapps.com/start\"}}"
        ),
    );
    let out = d
        .run_ok(
            &CREATE,
            &[
                ("AWS_ENDPOINT_URL_DYNAMODB", d.dynamo_url()),
                ("AWS_ENDPOINT_URL_SSO", sso.url()),
                ("AWS_PROFILE", s("sso")),
            ],
        )
        .await;
    d.assert_signed(
        "ASIASSOKEY",
        "ap-northeast-1",
        Some("sso-session-token-7890"),
    );
    assert_not_logged(
        &out,
        &[
            "sso-secret-key-7890",
            "sso-session-token-7890",
            access_token,
        ],
    );
    let seen = sso.seen();
    assert_eq!(seen.len(), 1, "one GetRoleCredentials");
    assert!(
        seen[0].uri.contains("account_id=123456789012") && seen[0].uri.contains("role_name=Writer"),
        "{}",
        seen[0].uri
    );
}

/// On AWS itself with no region anywhere: IMDS disabled is never asked; IMDS that refuses or
/// never answers (off EC2, a network that drops packets to the metadata address) is asked once,
/// and the start goes on with the seed's region, signed for us-west-2. Only loopback: a listener
/// that accepts and never answers stands in for the silent metadata address. The time each took
/// is printed (README, "AWS credentials and region", quotes it); nothing here asserts a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_that_is_disabled_refused_or_silent_leaves_the_default_region() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let held = tokio::spawn({
        let accepted = std::sync::Arc::clone(&accepted);
        async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                open.push(stream);
            }
        }
    });
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    for (name, disabled, endpoint, asked) in [
        ("IMDS disabled", "true", silent_url.clone(), false),
        (
            "IMDS refused (nothing listening)",
            "false",
            format!("http://127.0.0.1:{closed_port}"),
            false,
        ),
        (
            "IMDS silent (accepts, never answers)",
            "false",
            silent_url.clone(),
            true,
        ),
    ] {
        let d = Deployment::new().await;
        let conf = aws_backend(&d);
        let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
        let started = Instant::now();
        d.run_ok(
            &["--config", conf.to_str().unwrap(), "tables", "create"],
            &[
                ("AWS_EC2_METADATA_DISABLED", s(disabled)),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint),
                ("AWS_ACCESS_KEY_ID", s("AKIAENVKEY")),
                ("AWS_SECRET_ACCESS_KEY", s("env-secret-key-4711")),
            ],
        )
        .await;
        println!("{name}: tables create took {:?}", started.elapsed());
        d.assert_signed("AKIAENVKEY", "us-west-2", None);
        let asked_now = accepted.load(std::sync::atomic::Ordering::SeqCst) > before;
        assert_eq!(asked_now, asked, "{name}: IMDS asked");
    }
    held.abort();
}
