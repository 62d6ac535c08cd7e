"""The job dashboard served at `/` (static files shipped with the package)."""

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
