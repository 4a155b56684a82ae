"""A minimal Django app for examples/deploy_django.py: the batcher opened in ``ready()``."""
