"""Names shared by the API's publisher and the worker: the task and its queue, written once
for both processes (the API sends the task by name and never imports the worker)."""

TASK_NAME = "secateurs.run_job"
QUEUE = "jobs"
