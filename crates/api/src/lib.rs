//! The OpenAI-compatible HTTP layer `reprise serve` and `reprise route` share: one
//! skeleton (`app`: every route, admission, request preparation, the shared
//! endpoints, the serve loop) over a `Backend` each of them implements; the
//! listener and middleware (request ids, arrival stamps, API keys), request bodies
//! and their fields (validation, the field table, prompts and chat templates),
//! errors in OpenAI's shape, the CPU pool for per-request work, metric names and
//! histograms, the options both share, and loading the model's text side with the
//! default model fetched on first use. No candle: `route` builds without it.

pub mod admission;
pub mod app;
pub mod body;
pub mod cpu;
pub mod errors;
pub mod fetch;
pub mod fields;
pub mod ids;
pub mod listener;
pub mod metrics;
pub mod middleware;
pub mod model_info;
pub mod openapi;
pub mod options;
pub mod params;
pub mod prompt;
pub mod reader;
pub mod serve;
pub mod shutdown;
pub mod structured;
pub mod tokenize;
pub mod tools;
