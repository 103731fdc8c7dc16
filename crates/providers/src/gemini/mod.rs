//! Gemini streamGenerateContent adapter (in progress).
