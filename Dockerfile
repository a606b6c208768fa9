FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY . .
RUN pip install -e .
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "web:create_app()"]
