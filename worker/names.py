"""Names shared by the API's publisher and the worker: the task and its queue."""

TASK_NAME = "secateurs.run_job"
QUEUE = "jobs"
