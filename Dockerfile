# The GSLB on port 53 (UDP and TCP) with its API on 8053.
#   docker build -t gslb .
#   docker run -p 53:53/udp -p 53:53/tcp -p 8053:8053 -v gslb-state:/var/lib/gslb gslb
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends libcap2-bin \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/gslb
COPY pyproject.toml README.md ./
COPY gslb ./gslb
RUN pip install --no-cache-dir . \
    # let the unprivileged user bind port 53
    && setcap 'cap_net_bind_service=+ep' "$(readlink -f "$(command -v python3)")"

COPY zones /etc/gslb/zones
COPY data/gslb-geo.mmdb /usr/share/gslb/gslb-geo.mmdb
RUN useradd --system --home /var/lib/gslb --create-home gslb
USER gslb

ENV GSLB_ZONES=/etc/gslb/zones \
    GSLB_DNS=0.0.0.0:53 \
    GSLB_API=0.0.0.0:8053 \
    GSLB_STATE=/var/lib/gslb/state.sqlite \
    GSLB_GEOIP=/usr/share/gslb/gslb-geo.mmdb
VOLUME ["/etc/gslb/zones", "/var/lib/gslb"]
EXPOSE 53/udp 53/tcp 8053/tcp
HEALTHCHECK --interval=10s --timeout=3s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8053/healthz', timeout=2)"
ENTRYPOINT ["gslb"]
CMD ["serve"]
