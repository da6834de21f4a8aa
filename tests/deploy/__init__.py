"""Deployment files: Dockerfile, .dockerignore, docker-compose.yml and the health probe."""
