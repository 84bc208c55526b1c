"""labelloop's Airflow provider: hooks own connections, operators are thin wrappers around `labelloop`.

Installed from the `operators/` folder under the import name `labelloop_airflow`.
"""
