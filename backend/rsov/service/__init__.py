"""The local HTTP service (``rsov serve``): schemas, app and routes, jobs, downloads, and a client."""
