"""Custom Airflow operators for labelloop (thin wrappers around the labelloop library)."""
