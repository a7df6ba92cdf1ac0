//! Loopback HTTP stand-ins for the AWS endpoints the credential and region chains call, and a
//! recording proxy in front of dynoxide that keeps what each DynamoDB request was signed with.
//!
//! The answers are written from AWS's published formats: the ECS container credentials JSON
//! (Amazon ECS developer guide, "Task IAM role"), IMDSv2 (EC2 user guide, "Use the Instance
//! Metadata Service": the token PUT, `iam/security-credentials/`, `placement/region`), STS
//! `AssumeRoleWithWebIdentity` (STS API reference, query protocol, XML), SSO
//! `GetRoleCredentials` (IAM Identity Center portal API reference, JSON), and the
//! `credential_process` output (AWS SDKs and Tools reference guide, "Sourcing credentials with
//! an external process"). None of them checks more than the tests assert.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// One request a stand-in received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The SigV4 credential scope of `Authorization: AWS4-HMAC-SHA256
    /// Credential=KEYID/DATE/REGION/SERVICE/aws4_request, ...`: (key id, region, service).
    pub fn credential_scope(&self) -> Option<(String, String, String)> {
        let auth = self.header("authorization")?;
        let credential = auth.split("Credential=").nth(1)?.split(',').next()?;
        let parts: Vec<&str> = credential.split('/').collect();
        match parts.as_slice() {
            [key, _date, region, service, "aws4_request"] => {
                Some((key.to_string(), region.to_string(), service.to_string()))
            }
            _ => None,
        }
    }
}

/// What a stand-in answers: `Some` response, or `None` to forward the request upstream (the
/// recording proxy) or answer 404 (without upstream).
pub type Answer = Arc<dyn Fn(&Seen) -> Option<Response<Full<Bytes>>> + Send + Sync>;

struct State {
    answer: Answer,
    upstream: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// An HTTP/1 server on an ephemeral loopback port, alive as long as this value.
pub struct StandIn {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandIn {
    /// A stand-in answering with `answer` (404 where it has none).
    pub async fn start(answer: Answer) -> StandIn {
        Self::start_with(answer, None).await
    }

    /// The recording proxy: every request is kept and forwarded to `upstream` (dynoxide).
    pub async fn proxy(upstream: String) -> StandIn {
        Self::start_with(Arc::new(|_: &Seen| None), Some(upstream)).await
    }

    async fn start_with(answer: Answer, upstream: Option<String>) -> StandIn {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            answer,
            upstream,
            client: Client::builder(TokioExecutor::new()).build_http(),
            seen: Arc::clone(&seen),
        });
        let (addr, task) = crate::support::faults::serve_loopback(state, handle).await;
        StandIn { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        method: parts.method.clone(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers.clone(),
        body,
    };
    state.seen.lock().unwrap().push(seen.clone());
    if let Some(response) = (state.answer)(&seen) {
        return Ok(response);
    }
    let Some(upstream) = &state.upstream else {
        return Ok(reply(StatusCode::NOT_FOUND, "text/plain", "not here"));
    };
    let mut forward = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{upstream}{}", seen.uri));
    for (name, value) in &parts.headers {
        if name != "content-length" && name != "host" {
            forward = forward.header(name, value);
        }
    }
    let forward = forward.body(Full::new(seen.body.clone())).unwrap();
    Ok(match state.client.request(forward).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::from_parts(parts, Full::new(bytes))
        }
        Err(e) => reply(StatusCode::BAD_GATEWAY, "text/plain", &e.to_string()),
    })
}

/// A response with `body` as `content_type`.
pub fn reply(status: StatusCode, content_type: &str, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Temporary credentials a stand-in hands out.
#[derive(Debug, Clone)]
pub struct Issued {
    pub key_id: &'static str,
    pub secret: &'static str,
    pub token: &'static str,
}

/// An expiry an hour or more away in RFC 3339 (the SDK refreshes credentials close to expiry).
pub const EXPIRATION: &str = "2099-01-01T00:00:00Z";

/// The ECS container credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`): the JSON of
/// the task role's credentials at `path`, only with `Authorization: auth` when given.
pub fn ecs(path: &'static str, auth: Option<&'static str>, creds: Issued) -> Answer {
    Arc::new(move |seen: &Seen| {
        if seen.uri != path {
            return None;
        }
        if auth.is_some() && seen.header("authorization") != auth {
            return Some(reply(StatusCode::UNAUTHORIZED, "text/plain", "no"));
        }
        let body = serde_json::json!({
            "RoleArn": "arn:aws:iam::123456789012:role/task",
            "AccessKeyId": creds.key_id,
            "SecretAccessKey": creds.secret,
            "Token": creds.token,
            "Expiration": EXPIRATION,
        });
        Some(reply(StatusCode::OK, "application/json", &body.to_string()))
    })
}

/// The session token the IMDS stand-in hands out for the token PUT.
pub const IMDS_TOKEN: &str = "imds-session-token-AQAEA";

/// IMDSv2 (`AWS_EC2_METADATA_SERVICE_ENDPOINT`): `PUT /latest/api/token`, then, with the token,
/// the instance role's name and credentials and the instance's region.
pub fn imds(role: &'static str, region: &'static str, creds: Issued) -> Answer {
    Arc::new(move |seen: &Seen| {
        if seen.method == Method::PUT && seen.uri == "/latest/api/token" {
            if seen
                .header("x-aws-ec2-metadata-token-ttl-seconds")
                .is_none()
            {
                return Some(reply(StatusCode::BAD_REQUEST, "text/plain", "ttl"));
            }
            let mut r = reply(StatusCode::OK, "text/plain", IMDS_TOKEN);
            r.headers_mut().insert(
                "x-aws-ec2-metadata-token-ttl-seconds",
                hyper::header::HeaderValue::from_static("21600"),
            );
            return Some(r);
        }
        if seen.header("x-aws-ec2-metadata-token") != Some(IMDS_TOKEN) {
            return Some(reply(StatusCode::UNAUTHORIZED, "text/plain", ""));
        }
        let role_path = format!("/latest/meta-data/iam/security-credentials/{role}");
        match seen.uri.as_str() {
            "/latest/meta-data/iam/security-credentials/" => {
                Some(reply(StatusCode::OK, "text/plain", role))
            }
            p if p == role_path => {
                let body = serde_json::json!({
                    "Code": "Success",
                    "LastUpdated": "2026-12-01T00:00:00Z",
                    "Type": "AWS-HMAC",
                    "AccessKeyId": creds.key_id,
                    "SecretAccessKey": creds.secret,
                    "Token": creds.token,
                    "Expiration": EXPIRATION,
                });
                Some(reply(StatusCode::OK, "text/plain", &body.to_string()))
            }
            "/latest/meta-data/placement/region" => {
                Some(reply(StatusCode::OK, "text/plain", region))
            }
            _ => Some(reply(StatusCode::NOT_FOUND, "text/plain", "")),
        }
    })
}

/// STS (`AWS_ENDPOINT_URL_STS`): `AssumeRoleWithWebIdentity` in the query protocol, answered
/// only for `role_arn` and the web identity token `jwt`.
pub fn sts(role_arn: &'static str, jwt: &'static str, creds: Issued) -> Answer {
    Arc::new(move |seen: &Seen| {
        let form: Vec<(String, String)> = url_form(&seen.body);
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("Action") != Some("AssumeRoleWithWebIdentity")
            || get("RoleArn") != Some(role_arn)
            || get("WebIdentityToken") != Some(jwt)
        {
            return Some(reply(
                StatusCode::BAD_REQUEST,
                "text/xml",
                "<ErrorResponse/>",
            ));
        }
        let body = format!(
            r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:mqtt:mqtt-dynamo</SubjectFromWebIdentityToken>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/irsa/mqtt-dynamo</Arn>
      <AssumedRoleId>AROAEXAMPLE:mqtt-dynamo</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{}</AccessKeyId>
      <SecretAccessKey>{}</SecretAccessKey>
      <SessionToken>{}</SessionToken>
      <Expiration>{EXPIRATION}</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
            creds.key_id, creds.secret, creds.token
        );
        Some(reply(StatusCode::OK, "text/xml", &body))
    })
}

/// SSO's portal API (`AWS_ENDPOINT_URL_SSO`): `GET /federation/credentials?account_id&role_name`
/// with the cached access token in `x-amz-sso_bearer_token`.
pub fn sso(access_token: &'static str, creds: Issued) -> Answer {
    Arc::new(move |seen: &Seen| {
        if !seen.uri.starts_with("/federation/credentials") {
            return None;
        }
        if seen.header("x-amz-sso_bearer_token") != Some(access_token) {
            return Some(reply(
                StatusCode::UNAUTHORIZED,
                "application/json",
                r#"{"message":"Session token not found or invalid"}"#,
            ));
        }
        let body = serde_json::json!({
            "roleCredentials": {
                "accessKeyId": creds.key_id,
                "secretAccessKey": creds.secret,
                "sessionToken": creds.token,
                "expiration": 4_070_908_800_000u64,
            }
        });
        Some(reply(StatusCode::OK, "application/json", &body.to_string()))
    })
}

/// `application/x-www-form-urlencoded` pairs, percent-decoded.
fn url_form(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
