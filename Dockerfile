# The image behind docker-compose.yml: gunicorn 'web:create_app()' by default; the compose
# services run the other Procfile processes (python -m workerd, alembic upgrade head) in it.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000
WORKDIR /app

# The dependencies in a layer of their own, from install_requires in setup.cfg alone, so an
# edit to the source reuses it and only the last, small layer is rebuilt.
COPY setup.cfg ./
RUN python -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); \
print(c['options']['install_requires'])" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The package itself, as a regular (not editable) install; alembic.ini and gunicorn.conf.py
# are read from this working directory.
COPY . .
RUN pip install --no-deps . && rm -rf build *.egg-info

# Nothing here needs root: the service only talks to PostgreSQL and serves $PORT.
RUN useradd --system --uid 10001 --create-home chunkq
USER chunkq

EXPOSE 8000
# gunicorn binds 0.0.0.0:$PORT by itself when PORT is set, as the Procfile's web does.
CMD ["gunicorn", "web:create_app()"]
