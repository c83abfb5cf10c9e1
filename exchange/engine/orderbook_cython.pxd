# Typed layout of the Cython build of orderbook.py (Cython "pure Python mode").
#
# scripts/build-engine.sh copies orderbook.py to orderbook_cython.py next to
# this file and compiles it: the source is the same, this file only adds C
# types. Everything declared here must keep the pure-Python semantics:
# - values typed `long long` are range-checked before they get here (prices
#   and quantities are below 2**62, keys are +-price, `_NO_BOUND` is -2**63);
# - a level's `total` is a sum of quantities that can pass 2**63, so it stays
#   a Python int;
# - flags that the pure core stores as given (post_only, reduce_only,
#   market_data) stay Python objects so state() encodes them identically.
cimport cython


@cython.final
cdef class Order:
    cdef public long long oid
    cdef public object id
    cdef public object account
    cdef public bint is_buy
    cdef public long long price
    cdef public long long qty
    cdef public object post_only
    cdef public long long stp
    cdef public object reduce_only
    cdef public Level level
    cdef public Order prev
    cdef public Order next


@cython.final
cdef class Level:
    cdef public long long key
    cdef public long long price
    cdef public object total
    cdef public long long count
    cdef public Order head
    cdef public Order tail


@cython.final
cdef class BookSide:
    cdef public long long sign
    cdef public dict levels
    cdef public list keys


@cython.locals(o=Order)
cdef Order _make_order(long long oid, id, account, bint is_buy, long long price, long long qty,
                       post_only, long long stp, reduce_only)


@cython.final
cdef class OrderBook:
    # Attributes added to the pure source later still work (slower) through
    # the instance dict until they are declared here.
    cdef dict __dict__
    cdef public object instrument
    cdef public object market_data
    cdef public object reduce_only_hook
    cdef public list events
    cdef public long long seq
    cdef public long long next_oid
    cdef public BookSide bids
    cdef public BookSide asks
    cdef public dict orders
    cdef public dict stops
    cdef public object last_price
    cdef public object mark_price
    cdef public object _tick
    cdef public object _lot
    cdef public object _min_qty
    cdef public object _max_qty
    cdef public object _band_bps
    cdef public object reference_price
    cdef public object _band_lo
    cdef public object _band_hi
    cdef public object _halt_reason
    cdef public list _touched
    cdef public tuple _bbo
    cdef public dict _accounts

    # Internal methods are cpdef so the core calls them as C functions.
    # Arguments stay Python objects until the pure code has validated them.
    cpdef process(self, cmd)
    cpdef process_many(self, cmds)
    @cython.locals(is_buy=bint, stp=cython.longlong, oid=cython.longlong, is_market=bint,
                   limit=cython.longlong, seq=cython.longlong, remaining=cython.longlong,
                   code=cython.longlong)
    cpdef _on_new(self, c)
    cpdef _shared(self, account)
    cpdef _accept_stop(self, c, oid, is_buy, stp)
    cpdef int _validate_new(self, c, id, account, side, qty, t, price, tif, stp_name,
                            reduce_only, trigger_price) except? -1
    cpdef int _validate_type(self, c, t, price, tif, trigger_price) except? -1
    cpdef int _validate_trigger(self, c) except? -1
    cpdef Py_ssize_t _protection_bound(self, bint is_buy) except? -1
    cpdef int _check_against_book(self, account, bint is_buy, bint is_market,
                                        long long limit, qty, tif, long long stp) except? -1
    @cython.locals(opp=BookSide, keys=list, levels=dict, level=Level, o=Order, i=Py_ssize_t)
    cpdef bint _fillable(self, account, bint is_buy, long long bound, qty,
                         long long stp) except? -1
    @cython.locals(remaining=cython.longlong, bound=cython.longlong, opp=BookSide)
    cpdef _execute(self, long long oid, id, account, bint is_buy, bint is_market,
                   long long limit, qty, tif, long long stp, reduce_only, ts)
    @cython.locals(remaining=cython.longlong, seq=cython.longlong, traded_price=cython.longlong,
                   key=cython.longlong, price=cython.longlong, oqty=cython.longlong,
                   level=Level, o=Order, nxt=Order, opp=BookSide, keys=list, levels=dict,
                   events=list, orders=dict)
    cpdef Py_ssize_t _match(self, id, account, bint is_buy, long long bound, long long qty,
                           long long stp, ts) except? -1
    @cython.locals(nxt=Order)
    cpdef _unlink_head(self, Level level, Order o)
    @cython.locals(side=BookSide, key=cython.longlong, level=Level, keys=list, tail=Order)
    cpdef _rest(self, Order o)
    @cython.locals(level=Level, prev=Order, nxt=Order, side=BookSide, keys=list,
                   key=cython.longlong)
    cpdef _remove(self, Order o)
    @cython.locals(o=Order)
    cpdef _on_cancel(self, c)
    @cython.locals(o=Order, level=Level)
    cpdef _on_amend(self, c)
    cpdef _validate_amend(self, c, Order o, qty, price)
    cpdef _set_reference(self, price)
    cpdef _on_reference(self, c)
    cpdef _on_price(self, c)
    cpdef _run_triggered(self, s, ts)
    cpdef _on_book_request(self, c)
    cpdef _bbo_tuple(self)
    @cython.locals(level=Level, side_book=BookSide)
    cpdef _flush_market_data(self)
    cpdef _reject(self, id, code, message)
