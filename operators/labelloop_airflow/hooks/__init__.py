"""Airflow hooks for the services labelloop talks to."""
