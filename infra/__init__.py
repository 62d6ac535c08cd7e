"""The infrastructure the API and the worker share: settings (`config`), the job store
(`db`: models, sessions, job state, migrations), artifact storage (`storage`), the sandbox
for untrusted files (`sandbox`), ids and signed webhooks. No HTTP and no torch here:
`app/` is the HTTP process, `worker/` the job process, and both build on this."""
