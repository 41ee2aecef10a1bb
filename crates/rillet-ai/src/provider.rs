//! External model providers that speak the OpenAI HTTP API (`/v1/embeddings`,
//! `/v1/chat/completions`, `/v1/audio/transcriptions`): OpenAI itself, vLLM, llama.cpp's
//! server, Ollama, or Rillet's own `python -m rillet.dev.openai_server`.
//!
//! A provider is registered once under a name ([`register`]) and resolved by it
//! ([`provider`]); operators naming it share its HTTP connections, its bound on requests in
//! flight and its circuit breaker. Each request:
//! - carries the API key read from the environment variable the registration names (the
//!   key itself is never stored in a plan or a log);
//! - has a timeout; a timeout, a connection error or a 5xx reply is retried with
//!   exponential backoff (100 ms doubling, up to `max_retries` times), each wait drawn
//!   between half and all of it so that requests that failed together do not retry
//!   together;
//! - on 429 waits as long as the reply's `Retry-After` says (seconds or an HTTP date; 1 s
//!   without one), plus up to a fifth more, before trying again, at most
//!   `max_rate_limited` times per call, and fails at once when it asks for more than
//!   `max_rate_limit_wait`, without counting towards the breaker;
//! - fails at once on other 4xx replies (a bad request is not retried), with the
//!   provider's own error message;
//! - reads the reply into the OpenAI shape expected (a vector of numbers, a message), and
//!   fails, saying what is wrong, on a reply of another shape.
//!
//! After `breaker_failures` requests in a row failed for good (retries exhausted), the
//! breaker opens: calls fail at once ("circuit open") for `breaker_cooldown`, then one
//! trial request is let through; its success closes the breaker again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rillet_common::retry::{backoff, jitter};
use rillet_common::{Result, RilletError};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// How to reach a provider and how hard to try.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The name operators use.
    pub name: String,
    /// Base URL up to and including `/v1` (`https://api.openai.com/v1`).
    pub base_url: String,
    /// Environment variable holding the API key (sent as a bearer token), if any.
    pub api_key_env: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries after a timeout, connection error or 5xx reply.
    pub max_retries: u32,
    /// 429 replies waited out per call before it fails.
    pub max_rate_limited: u32,
    /// The longest `Retry-After` waited out; a 429 asking for more fails the call at once.
    pub max_rate_limit_wait: Duration,
    /// Requests in flight at once, across every operator using the provider.
    pub max_concurrency: usize,
    /// Requests in a row that failed for good before the breaker opens.
    pub breaker_failures: u32,
    /// How long the open breaker fails calls at once before letting a trial through.
    pub breaker_cooldown: Duration,
}

impl ProviderConfig {
    /// A provider at `base_url` with default limits: 60 s timeout, 4 retries, 8 waits of
    /// up to 60 s on 429, 16 requests in flight, breaker after 5 failures for 10 s.
    ///
    /// ```
    /// let config = rillet_ai::provider::ProviderConfig::new("local", "http://127.0.0.1:8000/v1");
    /// assert_eq!(config.max_rate_limited, 8);
    /// ```
    pub fn new(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            base_url: base_url.into(),
            api_key_env: None,
            timeout: Duration::from_secs(60),
            max_retries: 4,
            max_rate_limited: 8,
            max_rate_limit_wait: Duration::from_secs(60),
            max_concurrency: 16,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(10),
        }
    }
}

/// A registered provider: its client, limits, breaker and counters.
#[derive(Debug)]
pub struct Provider {
    config: ProviderConfig,
    client: reqwest::Client,
    permits: Semaphore,
    breaker: Mutex<Breaker>,
    requests: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
    /// Embedding sizes per model, learnt once from the provider.
    dimensions: Mutex<HashMap<String, usize>>,
}

#[derive(Debug, Default)]
struct Breaker {
    failures_in_a_row: u32,
    open_until: Option<Instant>,
    /// A trial request is out while half-open.
    trial: bool,
}

/// A provider's counters ([`Provider::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Requests sent again after a timeout, connection error or 5xx reply.
    pub retries: u64,
    /// 429 replies waited out.
    pub rate_limited: u64,
    /// Calls that failed for good.
    pub failures: u64,
    /// Calls refused at once by the open breaker.
    pub rejected: u64,
    /// Whether the breaker is open now.
    pub open: bool,
}

fn registry() -> &'static Mutex<HashMap<String, Arc<Provider>>> {
    static PROVIDERS: OnceLock<Mutex<HashMap<String, Arc<Provider>>>> = OnceLock::new();
    PROVIDERS.get_or_init(Default::default)
}

/// Register (or replace) the provider `config.name`.
pub fn register(config: ProviderConfig) -> Result<Arc<Provider>> {
    if config.name.is_empty() || config.base_url.is_empty() {
        return Err(RilletError::invalid_argument(
            "a provider needs a name and a base_url",
        ));
    }
    if config.max_concurrency == 0 {
        return Err(RilletError::invalid_argument(
            "a provider's max_concurrency must be at least 1",
        ));
    }
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|e| RilletError::internal(format!("cannot build an HTTP client: {e}")))?;
    let provider = Arc::new(Provider {
        permits: Semaphore::new(config.max_concurrency),
        config,
        client,
        breaker: Mutex::default(),
        requests: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        rate_limited: AtomicU64::new(0),
        failures: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        dimensions: Mutex::default(),
    });
    registry()
        .lock()
        .insert(provider.config.name.clone(), provider.clone());
    Ok(provider)
}

/// `bytes` of MIME type `mime` inline as a `data:` URL (base64), for a request that must
/// carry its image itself.
///
/// ```
/// assert_eq!(rillet_ai::provider::data_url(b"hi", "text/plain"), "data:text/plain;base64,aGk=");
/// ```
pub fn data_url(bytes: &[u8], mime: &str) -> String {
    use base64::Engine as _;
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The provider registered as `name`.
pub fn provider(name: &str) -> Result<Arc<Provider>> {
    let providers = registry().lock();
    providers.get(name).cloned().ok_or_else(|| {
        let mut known: Vec<&String> = providers.keys().collect();
        known.sort();
        RilletError::invalid_argument(format!(
            "no provider named {name:?} is registered (known: {known:?}); register it with \
             rl.ai.register_provider({name:?}, base_url=...)"
        ))
    })
}

/// A request body: JSON, or a multipart form (audio uploads).
pub enum Body {
    /// `application/json`.
    Json(Value),
    /// `multipart/form-data`: text fields and one file field `(name, filename, bytes)`.
    Form(Vec<(String, String)>, (String, String, Vec<u8>)),
}

impl Provider {
    /// Its registration.
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Its counters now.
    pub fn stats(&self) -> ProviderStats {
        let open = self
            .breaker
            .lock()
            .open_until
            .is_some_and(|t| t > Instant::now());
        ProviderStats {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            open,
        }
    }

    /// `POST {base_url}/{path}` with `body`, under the provider's retry, rate-limit and
    /// breaker rules; the reply read as a `T`, or why there is none.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Body,
    ) -> std::result::Result<T, String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "the provider is closed".to_string())?;
        // After the wait for a permit: requests queued behind failing ones see the breaker
        // those opened.
        self.admit()?;
        let outcome = self.post_with_retries(path, body).await;
        // A request the provider refused (4xx, a missing key) says nothing about its
        // health: only replies and the failures of the provider itself move the breaker.
        self.settle(match &outcome {
            Ok(_) => Some(true),
            Err(Failure::Provider(_)) => Some(false),
            Err(Failure::Refused(_)) => None,
        });
        outcome.map_err(|failure| {
            self.failures.fetch_add(1, Ordering::Relaxed);
            match failure {
                Failure::Provider(why) | Failure::Refused(why) => why,
            }
        })
    }

    /// Refuse at once while the breaker is open; let one trial through once it cools.
    fn admit(&self) -> std::result::Result<(), String> {
        let mut breaker = self.breaker.lock();
        let Some(until) = breaker.open_until else {
            return Ok(());
        };
        if Instant::now() >= until && !breaker.trial {
            breaker.trial = true;
            return Ok(());
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Err(format!(
            "provider {:?}: circuit open after {} failed requests in a row; not calling it \
             for up to {:?}",
            self.config.name, breaker.failures_in_a_row, self.config.breaker_cooldown
        ))
    }

    /// Record how a request ended: answered, failed by the provider, or neither (`None`).
    fn settle(&self, answered: Option<bool>) {
        let mut breaker = self.breaker.lock();
        breaker.trial = false;
        let Some(ok) = answered else { return };
        if ok {
            *breaker = Breaker::default();
            return;
        }
        breaker.failures_in_a_row += 1;
        if breaker.open_until.is_some() || breaker.failures_in_a_row >= self.config.breaker_failures
        {
            if breaker.open_until.is_none() {
                tracing::warn!(
                    "provider {:?}: {} requests in a row failed; opening its circuit for {:?}",
                    self.config.name,
                    breaker.failures_in_a_row,
                    self.config.breaker_cooldown
                );
            }
            breaker.open_until = Some(Instant::now() + self.config.breaker_cooldown);
        }
    }

    async fn post_with_retries<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Body,
    ) -> std::result::Result<T, Failure> {
        let url = format!("{}/{}", self.config.base_url.trim_end_matches('/'), path);
        let mut retries = 0;
        let mut waits = 0;
        loop {
            let why = match self.send(&url, body).await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Fatal(why) => return Err(Failure::Refused(why)),
                Attempt::RateLimited(asked) => {
                    let wait = self.rate_limit_wait(asked, waits)?;
                    waits += 1;
                    self.rate_limited.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        "provider {:?}: 429, waiting {wait:?} as Retry-After asks",
                        self.config.name
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Attempt::Retry(why) => why,
            };
            if retries >= self.config.max_retries {
                return Err(Failure::Provider(format!(
                    "provider {:?}: {why} (gave up after {retries} retries)",
                    self.config.name
                )));
            }
            retries += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
            let wait = backoff(Duration::from_millis(100), retries as usize, 6);
            tokio::time::sleep(jitter(wait / 2, wait)).await;
        }
    }

    /// How long to wait after the 429 number `waits + 1` of a call whose `Retry-After`
    /// asked for `asked` (`None`: none, or unreadable): what it asks, plus up to a fifth
    /// more so that requests limited together come back apart; or the call's failure
    /// when it has waited enough or is asked to wait too long.
    fn rate_limit_wait(
        &self,
        asked: Option<Duration>,
        waits: u32,
    ) -> std::result::Result<Duration, Failure> {
        let name = &self.config.name;
        let wait = asked.unwrap_or(Duration::from_secs(1));
        if wait > self.config.max_rate_limit_wait {
            return Err(Failure::Refused(format!(
                "provider {name:?}: rate limited (429), and its Retry-After asks for a wait \
                 of {}, more than the {:?} allowed (max_rate_limit_wait_s)",
                if wait == Duration::MAX {
                    "ever".to_string()
                } else {
                    format!("{wait:?}")
                },
                self.config.max_rate_limit_wait
            )));
        }
        if waits >= self.config.max_rate_limited {
            return Err(Failure::Refused(format!(
                "provider {name:?}: still rate limited (429) after waiting {waits} times \
                 (max_rate_limited)"
            )));
        }
        let most = wait
            .saturating_add(wait / 5)
            .saturating_add(Duration::from_millis(20));
        Ok(jitter(wait, most))
    }

    async fn send<T: DeserializeOwned>(&self, url: &str, body: &Body) -> Attempt<T> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self.client.post(url);
        if let Some(var) = &self.config.api_key_env {
            match std::env::var(var) {
                Ok(key) if !key.is_empty() => request = request.bearer_auth(key),
                _ => {
                    return Attempt::Fatal(format!(
                        "provider {:?}: its API key variable {var} is not set",
                        self.config.name
                    ));
                }
            }
        }
        request = match body {
            Body::Json(value) => request.json(value),
            Body::Form(fields, (field, filename, bytes)) => {
                let mut form = reqwest::multipart::Form::new();
                for (k, v) in fields {
                    form = form.text(k.clone(), v.clone());
                }
                let part =
                    reqwest::multipart::Part::bytes(bytes.clone()).file_name(filename.clone());
                request.multipart(form.part(field.clone(), part))
            }
        };
        let reply = match request.send().await {
            Ok(reply) => reply,
            Err(e) if e.is_timeout() => {
                return Attempt::Retry(format!("no reply within {:?}", self.config.timeout));
            }
            Err(e) => return Attempt::Retry(format!("request failed: {e}")),
        };
        let status = reply.status();
        if status.as_u16() == 429 {
            return Attempt::RateLimited(
                reply
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry_after),
            );
        }
        let text = match reply.text().await {
            Ok(text) => text,
            Err(e) if e.is_timeout() => {
                return Attempt::Retry(format!("no reply within {:?}", self.config.timeout));
            }
            Err(e) => return Attempt::Retry(format!("reading the reply failed: {e}")),
        };
        if status.is_server_error() {
            return Attempt::Retry(format!("{status}: {}", error_message(&text)));
        }
        if !status.is_success() {
            return Attempt::Fatal(format!(
                "provider {:?} refused the request with {status}: {}",
                self.config.name,
                error_message(&text)
            ));
        }
        match serde_json::from_str(&text) {
            Ok(value) => Attempt::Done(value),
            Err(e) => Attempt::Fatal(format!(
                "provider {:?} replied to {url} with something that is not the reply \
                 expected ({e}): {}",
                self.config.name,
                text.chars().take(200).collect::<String>()
            )),
        }
    }

    /// Embeddings of `inputs` (one request), in input order.
    pub async fn embeddings(
        &self,
        model: &str,
        inputs: &[&str],
    ) -> std::result::Result<Vec<Vec<f32>>, String> {
        let reply: EmbeddingsReply = self
            .post(
                "embeddings",
                &Body::Json(json!({"model": model, "input": inputs})),
            )
            .await?;
        let mut out = vec![None; inputs.len()];
        for (position, item) in reply.data.into_iter().enumerate() {
            let index = item.index.unwrap_or(position);
            let slot = out.get_mut(index).ok_or_else(|| {
                format!(
                    "the embeddings reply has an embedding for input {index} of {}",
                    inputs.len()
                )
            })?;
            *slot = Some(item.embedding);
        }
        out.into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| format!("the embeddings reply lacks input {i}")))
            .collect()
    }

    /// The size of `model`'s embeddings, asked of the provider once (one short input) and
    /// remembered.
    pub async fn embedding_dimensions(&self, model: &str) -> std::result::Result<usize, String> {
        if let Some(&known) = self.dimensions.lock().get(model) {
            return Ok(known);
        }
        let probe = self.embeddings(model, &["dimension probe"]).await?;
        let dim = probe
            .first()
            .map(Vec::len)
            .filter(|d| *d > 0)
            .ok_or_else(|| "the provider returned an empty embedding".to_string())?;
        self.dimensions.lock().insert(model.to_string(), dim);
        Ok(dim)
    }

    /// One chat completion: `system` (if any) and `user` messages, the first choice's
    /// text. `json` asks for a JSON object (`response_format`).
    pub async fn chat(
        &self,
        model: &str,
        system: Option<&str>,
        user: &str,
        json: bool,
        temperature: Option<f64>,
    ) -> std::result::Result<String, String> {
        self.chat_with(model, system, json!(user), json, temperature)
            .await
    }

    /// A chat completion whose user message shows an image (`image_url`: an `https:` URL
    /// the provider can fetch, or a [`data_url`]) with `text` about it, in the OpenAI
    /// vision format (an `image_url` content part).
    pub async fn chat_about_image(
        &self,
        model: &str,
        system: Option<&str>,
        text: &str,
        image_url: &str,
        temperature: Option<f64>,
    ) -> std::result::Result<String, String> {
        let content = json!([
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]);
        self.chat_with(model, system, content, false, temperature)
            .await
    }

    /// One chat completion with `content` (a string or content parts) as the user message.
    async fn chat_with(
        &self,
        model: &str,
        system: Option<&str>,
        content: Value,
        json: bool,
        temperature: Option<f64>,
    ) -> std::result::Result<String, String> {
        let mut messages = Vec::new();
        if let Some(system) = system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": content}));
        let mut body = json!({"model": model, "messages": messages});
        if json {
            body["response_format"] = json!({"type": "json_object"});
        }
        if let Some(t) = temperature {
            body["temperature"] = json!(t);
        }
        let reply: ChatReply = self.post("chat/completions", &Body::Json(body)).await?;
        reply
            .choices
            .into_iter()
            .next()
            .and_then(|choice| choice.message.content)
            .ok_or_else(|| "the chat reply has no choices[0].message.content".to_string())
    }

    /// The transcript of a WAV file.
    pub async fn transcribe(
        &self,
        model: &str,
        wav: Vec<u8>,
        language: Option<&str>,
    ) -> std::result::Result<String, String> {
        let mut fields = vec![("model".to_string(), model.to_string())];
        if let Some(language) = language {
            fields.push(("language".to_string(), language.to_string()));
        }
        let body = Body::Form(fields, ("file".into(), "audio.wav".into(), wav));
        let reply: TranscriptionReply = self.post("audio/transcriptions", &body).await?;
        Ok(reply.text)
    }
}

/// Why a request failed for good.
enum Failure {
    /// The provider failed (timeouts, connection errors, 5xx): counts towards the breaker.
    Provider(String),
    /// The request was refused (4xx) or could not be made (no key): the provider is fine.
    Refused(String),
}

enum Attempt<T> {
    Done(T),
    Retry(String),
    /// A 429, and the wait its `Retry-After` asks for, if it says.
    RateLimited(Option<Duration>),
    Fatal(String),
}

/// `/v1/embeddings`' reply.
#[derive(Deserialize)]
struct EmbeddingsReply {
    data: Vec<Embedding>,
}

#[derive(Deserialize)]
struct Embedding {
    /// The input's place; providers that leave it out answer in input order.
    index: Option<usize>,
    embedding: Vec<f32>,
}

/// `/v1/chat/completions`' reply.
#[derive(Deserialize)]
struct ChatReply {
    choices: Vec<ChatChoice>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatMessage,
}

#[derive(Deserialize)]
struct ChatMessage {
    content: Option<String>,
}

/// `/v1/audio/transcriptions`' reply.
#[derive(Deserialize)]
struct TranscriptionReply {
    text: String,
}

/// An OpenAI error body.
#[derive(Deserialize)]
struct ErrorReply {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: String,
}

/// `Retry-After`: delay seconds, or an HTTP date; `Duration::MAX` for a wait too long to
/// hold.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds >= 0.0)
            .then(|| Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The `error.message` of an OpenAI-style error body, or the body itself (shortened).
fn error_message(text: &str) -> String {
    if let Ok(reply) = serde_json::from_str::<ErrorReply>(text) {
        return reply.error.message;
    }
    text.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(retry_after("-1"), None);
        assert_eq!(retry_after("nan"), None);
        // Too long to hold in a Duration: the longest, never a panic.
        assert_eq!(retry_after("1e20"), Some(Duration::MAX));
        assert_eq!(retry_after("inf"), Some(Duration::MAX));
        let past = retry_after("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(past, Some(Duration::ZERO));
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let wait = retry_after(&soon).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
    }

    #[test]
    fn error_messages_come_from_the_openai_error_body() {
        let body = r#"{"error": {"message": "model not found", "type": "invalid_request_error"}}"#;
        assert_eq!(error_message(body), "model not found");
        assert_eq!(error_message("plain text"), "plain text");
    }

    #[test]
    fn refused_requests_do_not_move_the_breaker() {
        let mut config = ProviderConfig::new("refused-test", "http://127.0.0.1:9");
        config.breaker_failures = 2;
        let p = register(config).unwrap();
        p.settle(Some(false));
        for _ in 0..5 {
            p.settle(None); // a 4xx: the provider answered, the request was wrong
        }
        assert!(p.admit().is_ok());
        p.settle(Some(false));
        assert!(p.admit().is_err());
    }

    #[test]
    fn the_breaker_opens_after_failures_in_a_row_and_a_success_closes_it() {
        let mut config = ProviderConfig::new("breaker-test", "http://127.0.0.1:9");
        config.breaker_failures = 2;
        config.breaker_cooldown = Duration::from_millis(50);
        let p = register(config).unwrap();
        p.settle(Some(false));
        assert!(p.admit().is_ok());
        p.settle(Some(false));
        let refused = p.admit().unwrap_err();
        assert!(refused.contains("circuit open"), "{refused}");
        std::thread::sleep(Duration::from_millis(60));
        assert!(p.admit().is_ok()); // the trial
        assert!(p.admit().is_err()); // only one trial at a time
        p.settle(Some(true));
        assert!(p.admit().is_ok());
        assert!(!p.stats().open);
    }
}
