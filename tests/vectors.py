"""The three signed test vectors of shared/spec/mytpe-webhooks.md section 11, copied byte for byte."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Vector:
    event: str
    secret: str
    timestamp: str
    body: bytes
    signature: str
    size: int
    sha256: str


VECTORS = [
    Vector(
        event="transaction.completed",
        secret="whsec_0123456789abcdef0123456789abcdef0123456789abcdef",
        timestamp="1775745000",
        body=(
            b'{"delivery_id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","event":"transaction.completed","tim'
            b'estamp":"2026-04-09T14:30:00.000000Z","data":{"transaction":{"id":"9a8b7c6d-5e4f-3a2b-1c0d'
            b'-9e8f7a6b5c4d","order_number":"ORD-1775744700-ABC","order_id":"12345678","status":"complet'
            b'ed","amount":5000.00,"payment_method":"online","environment":"production","approval_code":'
            b'"ABC123","gateway_message":null,"motif":null,"customer":{"name":"Karim Benali","email":"ka'
            b'rim@example.com","phone":"+213555123456"},"metadata":{"reference":"REF-2026-001"},"created'
            b'_at":"2026-04-09T14:25:00.000000Z","updated_at":"2026-04-09T14:30:00.000000Z"},"pay_link":'
            b'{"id":"1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d","title":"Consultation Dr. Ahmed","details":"C'
            b'onsultation medicale","slug":"consultation-dr-ahmed","type":"dynamic","amount":5000.00,"st'
            b'atus":"active","payment_mode":"reusable","max_payments":null,"successful_payments_count":1'
            b'2,"remaining_payments":null},"instance":{"id":"abc123-def456","name":"Cabinet Dr. Ahmed"}}'
            b"}"
        ),
        signature="sha256=942c8c7faf0cbc8261425455095fa53ea9f2ea40a76d13710785c8f3ebfdd77c",
        size=991,
        sha256="917e3c04a3f6e9bee22536a836bdcb8133e8f194643ef5c123e8db25dbff969f",
    ),
    Vector(
        event="pay_link.closed",
        secret="whsec_9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822c",
        timestamp="1775746200",
        body=(
            b'{"delivery_id":"3b1f8e2a-7c4d-4e9a-8b6f-2d5c9a1e7f30","event":"pay_link.closed","timestamp'
            b'":"2026-04-09T14:50:00.000000Z","data":{"pay_link":{"id":"7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d'
            b'9e0f","title":"Soir\xc3\xa9e Gala 2026","details":"Billet d\'entr\xc3\xa9e","slug":"soiree-gala-2026","'
            b'type":"dynamic","amount":2500.00,"status":"closed","payment_mode":"limited","max_payments"'
            b':20,"successful_payments_count":20,"remaining_payments":0},"instance":{"id":"abc123-def456'
            b'","name":"Cabinet Dr. Ahmed"}}}'
        ),
        signature="sha256=eb53481a64376c9a5bcf0e224926401dd38cad61d069557283535dddbe4d1771",
        size=481,
        sha256="412790fd28a8e43dead32c859ef72f8ee820987398d58a6bfff1ffeb5b2ddf4e",
    ),
    Vector(
        event="transaction.failed",
        secret="whsec_a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4",
        timestamp="1712678400",
        body=(
            b'{"delivery_id":"0e9d8c7b-6a5f-4e3d-9c2b-1a0f9e8d7c6b","event":"transaction.failed","timest'
            b'amp":"2024-04-09T16:00:00.000000Z","data":{"transaction":{"id":"5d4c3b2a-1908-4f7e-8d6c-5b'
            b'4a39281706","order_number":"ORD-1712677800-XYZ","order_id":null,"status":"failed","amount"'
            b':1200.50,"payment_method":"online","environment":"development","approval_code":null,"gatew'
            b'ay_message":"Paiement refus\\u00e9","motif":null,"customer":{"name":null,"email":null,"phon'
            b'e":null},"metadata":{"return_url":"https:\\/\\/shop.example.dz\\/orders\\/42"},"created_at":"2'
            b'024-04-09T15:50:00.000000Z","updated_at":"2024-04-09T16:00:00.000000Z"},"pay_link":{"id":"'
            b'1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d","title":"Commande #42","details":"Boutique en ligne"'
            b',"slug":"commande-42","type":"static","amount":null,"status":"active","payment_mode":"reus'
            b'able","max_payments":null,"successful_payments_count":0,"remaining_payments":null},"instan'
            b'ce":{"id":"abc123-def456","name":"Boutique Example"}}}'
        ),
        signature="sha256=d5f1a8f1bc1ce8f60626bda4767b387c3ed3250bb50fbba603ca45bf30269a1c",
        size=954,
        sha256="62af89a2abe8174f27e46a2eff532bcb1fe9d8f48653abd4a0983cb7689bd47f",
    ),
]
