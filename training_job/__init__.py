"""Cloud Run Job entrypoint for periodic retraining (``python -m training_job.main``)."""
