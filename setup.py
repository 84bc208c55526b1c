"""Package layout that pyproject.toml alone cannot express.

Three source roots go into one wheel: `labelloop/` (the core), `operators/labelloop_airflow/` (the
Airflow provider, import name `labelloop_airflow` so nothing generic like `operators` lands in
site-packages) and `sql/migrations/` (installed as `labelloop.db.migrations`, so `labelloop db
upgrade` works from a wheel). Everything else about the project is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[
        *find_namespace_packages(include=["labelloop", "labelloop.*"]),
        *find_namespace_packages("operators", include=["labelloop_airflow", "labelloop_airflow.*"]),
        "labelloop.db.migrations",
    ],
    package_dir={
        "labelloop_airflow": "operators/labelloop_airflow",
        "labelloop.db.migrations": "sql/migrations",
    },
    package_data={
        "labelloop.specs": ["*.yaml", "label_config/*.xml"],
        "labelloop.db.migrations": ["script.py.mako", "versions/*.py"],
    },
)
