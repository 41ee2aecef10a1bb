//! Rillet's model operators: built-in AI functions over Arrow columns, registered by SQL
//! name like every native operator (`embed_text(text, 'all-minilm-l6-v2')`) and exposed in
//! Python as `rl.ai.*`.
//!
//! - [`embed::EmbedText`]: sentence embeddings from BERT-family encoders, on ONNX Runtime
//!   (or on candle from safetensors, with the `candle` feature); [`embed::ClassifyText`],
//!   zero-shot by embeddings.
//! - [`detect::DetectObjects`]: YOLO-style ONNX detectors, letterboxed, suppressed and
//!   mapped back to the image's coordinates.
//! - [`speech::DetectSpeech`]: voice activity with Silero VAD, clips run side by side.
//! - [`ocr::Ocr`]: text lines in images with PP-OCR (detector, then CTC recogniser).
//! - [`llm`]: `prompt`, `extract`, `llm_classify`, `classify_image`, `provider_embed` and
//!   `transcribe`, answered by an OpenAI-compatible [`provider`] registered by name.
//!
//! Models are named by directory (see [`model::resolve`]: `python -m rillet.models NAME`
//! fetches the real weights), loaded once per process on first use and shared by every
//! operator and call naming the same files ([`model::shared`]). ONNX Runtime is loaded at run
//! time from the `onnxruntime` wheel's library ([`onnx::library_path`]).
//!
//! ```
//! let names: Vec<String> = rillet_ai::functions().iter().map(|f| f.name().to_string()).collect();
//! assert!(names.contains(&"embed_text".to_string()));
//! ```

pub mod bert;
mod columns;
pub mod detect;
pub mod embed;
pub mod llm;
pub mod model;
pub mod ocr;
pub mod onnx;
pub mod provider;
pub mod speech;

use std::sync::Arc;

use rillet_functions::operator::OperatorFunction;
use rillet_operator::ArrayFunction;

/// Every model operator, ready to register.
pub fn functions() -> Vec<Arc<dyn ArrayFunction>> {
    vec![
        Arc::new(OperatorFunction::new(embed::EmbedText)),
        Arc::new(OperatorFunction::new(embed::ClassifyText)),
        Arc::new(OperatorFunction::new(detect::DetectObjects)),
        Arc::new(OperatorFunction::new(speech::DetectSpeech)),
        Arc::new(OperatorFunction::new(ocr::Ocr)),
        Arc::new(OperatorFunction::new(llm::Prompt)),
        Arc::new(OperatorFunction::new(llm::Extract)),
        Arc::new(OperatorFunction::new(llm::LlmClassify)),
        Arc::new(OperatorFunction::new(llm::ClassifyImage)),
        Arc::new(OperatorFunction::new(llm::ProviderEmbed)),
        Arc::new(OperatorFunction::new(llm::Transcribe)),
    ]
}
