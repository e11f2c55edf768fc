// A fresh PostgreSQL database per test, on the throwaway server that the
// ctest fixture "postgres" starts (scripts/pg-test-server.sh) and names in
// TERN_TEST_POSTGRES_URL. Without that variable, or when the server cannot
// be reached, the test FAILS: install-deps.sh brings PostgreSQL, so its
// absence is a broken machine, not a reason to skip.
#ifndef TERN_TESTS_SCHEDULER_POSTGRES_TEST_UTIL_H_
#define TERN_TESTS_SCHEDULER_POSTGRES_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace tern::scheduler::testing {

class PostgresTestDatabase {
 public:
  PostgresTestDatabase() {
    const char* base = std::getenv("TERN_TEST_POSTGRES_URL");
    if (base == nullptr || *base == '\0') {
      ADD_FAILURE() << "TERN_TEST_POSTGRES_URL is not set: run this test through ctest, whose "
                       "fixture \"postgres\" starts a server (scripts/pg-test-server.sh)";
      return;
    }
    base_url_ = base;
    static std::atomic<int> counter{0};
    name_ = "tern_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
    // postgresql://AUTHORITY/DB?QUERY with this test's database as DB.
    const size_t authority = base_url_.find("://") + 3;
    const size_t path = base_url_.find('/', authority);
    const size_t query = base_url_.find('?', authority);
    url_ = base_url_.substr(0, std::min(path, query)) + "/" + name_ +
           (query == std::string::npos ? "" : base_url_.substr(query));
    ok_ = Run(base_url_, "CREATE DATABASE " + name_);
  }
  ~PostgresTestDatabase() {
    if (ok_) Run(base_url_, "DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  }
  PostgresTestDatabase(const PostgresTestDatabase&) = delete;
  PostgresTestDatabase& operator=(const PostgresTestDatabase&) = delete;

  bool ok() const { return ok_; }
  const std::string& url() const { return url_; }

  // Runs `sql` in this database on a connection of its own; returns the
  // first column of the first row ("" for none), ADD_FAILUREs on error.
  std::string Query(const std::string& sql) {
    std::string out;
    Run(url_, sql, &out);
    return out;
  }

  // Holds one connection open, for transactions that span calls.
  class Session {
   public:
    explicit Session(const std::string& url) : conn_(PQconnectdb(url.c_str())) {
      EXPECT_EQ(PQstatus(conn_), CONNECTION_OK) << PQerrorMessage(conn_);
    }
    ~Session() { PQfinish(conn_); }
    std::string Query(const std::string& sql) {
      PGresult* r = PQexec(conn_, sql.c_str());
      const ExecStatusType s = PQresultStatus(r);
      EXPECT_TRUE(s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK)
          << sql << ": " << PQresultErrorMessage(r);
      std::string out = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
      PQclear(r);
      return out;
    }

   private:
    PGconn* conn_;
  };

 private:
  static bool Run(const std::string& url, const std::string& sql, std::string* out = nullptr) {
    PGconn* conn = PQconnectdb(url.c_str());
    if (PQstatus(conn) != CONNECTION_OK) {
      ADD_FAILURE() << "cannot reach the test PostgreSQL server at " << url << ": "
                    << PQerrorMessage(conn);
      PQfinish(conn);
      return false;
    }
    PGresult* r = PQexec(conn, sql.c_str());
    const ExecStatusType s = PQresultStatus(r);
    const bool ok = s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
    if (!ok) ADD_FAILURE() << sql << ": " << PQresultErrorMessage(r);
    if (ok && out != nullptr && PQntuples(r) > 0) *out = PQgetvalue(r, 0, 0);
    PQclear(r);
    PQfinish(conn);
    return ok;
  }

  std::string base_url_;
  std::string name_;
  std::string url_;
  bool ok_ = false;
};

}  // namespace tern::scheduler::testing

#endif  // TERN_TESTS_SCHEDULER_POSTGRES_TEST_UTIL_H_
