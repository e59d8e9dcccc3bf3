"""The customer web app (/app): server-rendered pages over the domain services, signed in like the API."""
