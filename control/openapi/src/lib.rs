//! OpenAPI v3 documents for /openapi/v3.
